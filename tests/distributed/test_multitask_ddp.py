"""`clap-lightning multitask fit` under DDP on 2 CPU processes (gloo), checked against one process.

The run trains demo3 for two epochs; its last validation (after the last step) gathers every
rank's labelled outputs, so re-validating the saved checkpoint in one process over the whole
validation split must give the same per-task metrics.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from clap_lightning.lit.multitask import MultiTaskDataModule, load_multitask
from clap_lightning.lit.multitask_config import plan_sources

ROOT = Path(__file__).resolve().parents[2]
DEMO3 = ROOT / "configs" / "multitask" / "demo3.yaml"
N_TASKS = 4


@pytest.mark.distributed
def test_multitask_fit_under_ddp_matches_one_process_validation(tmp_path: Path) -> None:
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    # 3 validation shards, so both ranks read some.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_recipes",
            "build",
            "demo",
            "--out",
            str(tmp_path),
            "--sample-rate",
            "16000",
            "--workers",
            "1",
            "--samples-per-shard",
            "10",
            "--no-progress",
            "-o",
            "train_per_class=4",
            "-o",
            "valid_per_class=2",
            "-o",
            "test_per_class=1",
        ],
        check=True,
        cwd=ROOT,
        env=env,
    )
    shards, run_dir = tmp_path / "demo", tmp_path / "run"
    overrides = [f"tasks.{i}.{key}={shards / split}" for i in range(N_TASKS)
                 for key, split in (("shards", "train"), ("val", "valid"))]
    overrides += [f"run_dir={run_dir}", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=8",
                  "data.global_batch_size=16", "data.epoch_samples=64", "data.num_workers=0", "data.shuffle_buffer=20",
                  "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
                  "trainer.loggers=[csv,tensorboard]"]
    done = subprocess.run([sys.executable, "-m", "clap_lightning.cli", "multitask", "fit", "--config", str(DEMO3),
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = list(csv.DictReader((run_dir / "logs" / "version_0" / "metrics.csv").open()))
    # Only rank 0 writes logs; throughput is reported for both ranks together and per device.
    assert len(list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    paced = [r for r in rows if r.get("perf/pairs_per_s")]
    assert [int(r["step"]) for r in paced] == list(range(8))
    for row in paced:
        assert float(row["perf/pairs_per_s"]) == pytest.approx(2 * float(row["perf/pairs_per_s_per_device"]))
        assert float(row["perf/pairs_per_s_per_device"]) * float(row["perf/step_ms"]) / 1000 == pytest.approx(8)
    validated = [r for r in rows if r.get("val/sound_class/acc")]
    assert [int(r["step"]) for r in validated] == [3, 7]  # after each 4-step epoch (0-based step of the last batch)
    module = load_multitask(run_dir / "checkpoints" / "last.ckpt")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=MultiTaskDataModule(module.config, plan_sources(module.config)), verbose=False)
    for task in ("sound_class", "pitch", "background"):
        key = f"val/{task}/acc"
        assert float(trainer.callback_metrics[key]) == pytest.approx(float(validated[-1][key]), abs=1e-6), key
    r2 = float(trainer.callback_metrics["val/duration/r2"])
    assert r2 == pytest.approx(float(validated[-1]["val/duration/r2"]), abs=1e-4)
