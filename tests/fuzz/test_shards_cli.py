"""Damaged shards through the real commands: `fit` (a loader worker) and `eval`, in subprocesses."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.shard_cases import all_cases
from tests.fuzz.test_shards import REASONS, SEED
from tests.shard_factory import write_good_shards
from tests.unit.test_one_reader import DAMAGE, damaged_split

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clap_lightning.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=280, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 3-step `fit` whose train and validation shards hold good samples and generated damage."""
    root = tmp_path_factory.mktemp("fuzz-fit")
    write_good_shards(root / "train", "good", 2, 6)
    for i, case in enumerate(c for c in all_cases(SEED)[::17] if c.data):  # one of every 17 generated cases
        (root / "train" / f"case-{i:03d}{case.suffix}").write_bytes(case.data)
    damaged_split(root / "clotho" / "test")
    run = run_cli("fit", "--config", "configs/experiment/demo.yaml", f"data.train={root / 'train'}",
                  f"data.val={root / 'clotho' / 'test'}", "data.global_batch_size=4", "data.epoch_samples=12",
                  "data.num_workers=1", "data.shuffle_buffer=4", "data.eval_batch_size=4", "trainer.max_steps=3",
                  "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.val_check_interval=3",
                  "trainer.limit_val_batches=2", "optim.warmup_steps=1", f"run_dir={root / 'run'}")
    return root, run


def test_fit_trains_past_damaged_shards_and_logs_the_counts(fitted):
    root, run = fitted
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    (metrics,) = (root / "run").glob("logs/*/metrics.csv")
    columns = next(csv.reader(metrics.open()))
    reasons = {c.removeprefix("data/skipped_") for c in columns if c.startswith("data/skipped_")}
    assert reasons and reasons <= REASONS, columns


def test_eval_counts_a_damaged_split_like_training(fitted):
    root, _ = fitted
    run = run_cli("eval", "--checkpoint", str(root / "run" / "checkpoints" / "last.ckpt"), "--tasks", "clotho_a2t",
                  "--data", str(root), "--out", str(root / "eval"), "--cache", "none", "--batch-size", "2",
                  "--num-workers", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    left_out = ", ".join(f"{k}={v}" for k, v in sorted(DAMAGE.items()))
    assert f"(left out: {left_out})" in run.stdout, run.stdout
