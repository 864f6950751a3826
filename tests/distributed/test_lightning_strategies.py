"""Losses over 20 steps through Lightning: DDP at world size 2 = one process; DeepSpeed ZeRO-2/3 = DDP.

GradCache under DDP (2 micro-batches of 2 per rank) keeps the 8-pair contrastive batch, so
its losses equal the one-process run too (manual optimization and DDP's gradient sync together).

Each run is `lightning_run.py` in a subprocess (Lightning's launcher starts the second rank),
training the tiny CLAP from the same seed on the same fixed random batches; it writes the
per-step global-batch losses, compared here to 1e-5. The first DeepSpeed run on a machine
compiles DeepSpeed's CPU shared-memory comm op (about a minute, cached in
~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("lightning_run.py")
ROOT = SCRIPT.parents[2]
STEPS = 20
RUNS = {
    "single": ["--devices", "1"],
    "ddp": ["--devices", "2", "--strategy", "ddp"],
    "ddp_local": ["--devices", "2", "--strategy", "ddp", "--local-loss"],
    "ddp_gradcache": ["--devices", "2", "--strategy", "ddp", "--gradcache", "2"],
    "zero2": ["--devices", "2", "--strategy", "deepspeed", "--deepspeed-config", "configs/deepspeed/zero2.json"],
    "zero3": ["--devices", "2", "--strategy", "deepspeed", "--deepspeed-config", "configs/deepspeed/zero3.json"],
}


@pytest.fixture(scope="module")
def run_losses(tokenizer_dir, tmp_path_factory):
    """Return `losses(name)`: the per-step losses of run `name`, running it on first use."""
    out_dir = tmp_path_factory.mktemp("lightning_runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cache: dict[str, list[float]] = {}

    def losses(name: str) -> list[float]:
        if name not in cache:
            out = out_dir / f"{name}.json"
            command = [sys.executable, str(SCRIPT), "--out", str(out), "--tokenizer", tokenizer_dir, *RUNS[name]]
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{name} run failed:\n{done.stderr[-3000:]}"
            cache[name] = json.loads(out.read_text())["losses"]
            assert len(cache[name]) == STEPS
        return cache[name]

    return losses


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["ddp", "ddp_local", "ddp_gradcache"])
def test_ddp_losses_equal_one_process_on_the_global_batch(run_losses, name: str) -> None:
    reference = run_losses("single")
    assert max(reference) - min(reference) > 1e-2  # the model trains: the comparison is not of constants
    assert max_abs_diff(run_losses(name), reference) <= 1e-5


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_losses_equal_ddp(run_losses, name: str) -> None:
    assert max_abs_diff(run_losses(name), run_losses("ddp")) <= 1e-5
