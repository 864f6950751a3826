#!/usr/bin/env bash
# One GPU machine's check of the training-step switches (issue #17): every figure is printed.
# Sized to finish in about 8 minutes on one H200: the step benchmark with all variants and a
# kernel profile of the fastest, then HTSAT alone (ours only: msclap is not installed) with
# SDPA and with FlexAttention window attention. Run from the repository root:
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' || { echo "error: venv setup failed"; exit 2; }
fi
PY=.venv/bin/python
export PYTHONUNBUFFERED=1  # a step cut short by its time limit still shows what it printed
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
status=0
run() {  # seconds, then the command: a step that fails or runs out of time is reported, the rest still run
    local limit=$1; shift
    echo "== $* (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@"; local rc=$?
    echo "== exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}
run 330 $PY benchmarks/bench_gpu_step.py --batch 96 --steps 10 --profile
run 60 $PY benchmarks/bench_htsat.py --device cuda --batch 32 --repeats 5 --attention sdpa
run 90 $PY benchmarks/bench_htsat.py --device cuda --batch 32 --repeats 5 --attention flex
exit $status
