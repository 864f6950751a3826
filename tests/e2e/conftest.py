"""Tiny demo shards, built once per session with the real recipe and writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_EXPERIMENT = REPO / "configs" / "experiment" / "demo.yaml"


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """`<root>/demo/{train,valid,test}` at 16 kHz: 8 / 2 / 3 clips per class."""
    root = tmp_path_factory.mktemp("shards")
    subprocess.run(
        [sys.executable, "-m", "data_recipes", "build", "demo", "--out", str(root), "--sample-rate", "16000",
         "--workers", "1", "--samples-per-shard", "40", "--no-progress",
         "-o", "train_per_class=8", "-o", "valid_per_class=2", "-o", "test_per_class=3"],
        check=True, cwd=REPO,
    )
    return root / "demo"


def demo_overrides(shards: Path, run_dir: Path, steps: int = 3) -> list[str]:
    """Overrides that make the demo experiment a seconds-long CPU run on the tiny shards."""
    return [
        f"data.train={shards / 'train'}",
        f"data.val={shards / 'valid'}",
        f"data.test={shards / 'test'}",
        "data.global_batch_size=16",
        "data.epoch_samples=64",
        "data.num_workers=0",
        "data.shuffle_buffer=50",
        "data.eval_batch_size=16",
        f"trainer.max_steps={steps}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "optim.warmup_steps=1",
        f"run_dir={run_dir}",
    ]
