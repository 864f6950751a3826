#!/bin/bash
# The rehearsal on a SLURM cluster: every job of docs/reproduce.md, through these sbatch scripts, on
# miniature corpora: shard job arrays, HTSAT-22 and CLAP through pretrain.sbatch (CLAP is sent SIGUSR1
# after its first periodic checkpoint: it saves, requeues and resumes), the 26-task report through
# eval.sbatch. Jobs ask for CPUs only. Run it from the repository root on a login node:
#
#   slurm/rehearse.sh [OUT]          # default OUT: runs/rehearsal-slurm (on a filesystem the nodes share)
#
# Environment: PYTHON (default: python), SBATCH_ARGS (site options for every job, e.g. "--partition=cpu").

set -euo pipefail
OUT=${1:-runs/rehearsal-slurm}
PYTHON=${PYTHON:-python}
for tool in sbatch squeue scontrol scancel; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found: run this on a SLURM login node" >&2; exit 2; }
done
exec "$PYTHON" -m tests.rehearsal --slurm --out "$OUT"
