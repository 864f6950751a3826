"""Multi-task pretraining on the demo corpus: every task beats chance; the encoder starts a contrastive fit."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.data.multitask import scan_field
from clap_lightning.data.sources import resolve_shards
from clap_lightning.lit.multitask import fit_multitask
from clap_lightning.lit.multitask_config import MultiTaskConfig
from clap_lightning.lit.pretraining import ClapPretraining
from clap_lightning.lit.run import run_stage
from clap_lightning.models.encoder_init import init_audio_encoder, load_audio_encoder_state
from tests.e2e.conftest import DEMO_EXPERIMENT, REPO, demo_overrides

DEMO3 = REPO / "configs" / "multitask" / "demo3.yaml"
STEPS = 240


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Demo shards large enough for a stable validation metric: 24 / 8 / 1 clips per class."""
    root = tmp_path_factory.mktemp("multitask_shards")
    subprocess.run([sys.executable, "-m", "data_recipes", "build", "demo", "--out", str(root), "--sample-rate", "16000",
                    "--workers", "1", "--samples-per-shard", "48", "--no-progress", "-o", "train_per_class=24",
                    "-o", "valid_per_class=8", "-o", "test_per_class=1",
                    "-o", "min_duration=1.0", "-o", "max_duration=3.0"], check=True, cwd=REPO)
    return root / "demo"


def task_overrides(shards: Path, n_tasks: int) -> list[str]:
    return [f"tasks.{i}.{key}={shards / split}" for i in range(n_tasks) for key, split in (("shards", "train"),
                                                                                             ("val", "valid"))]


@pytest.fixture(scope="module")
def trained(shards: Path, tmp_path_factory):
    """demo3 (3 classification tasks + a regression) trained for STEPS steps on CPU: (module, run dir)."""
    run_dir = tmp_path_factory.mktemp("multitask_run")
    n_tasks = len(load_config(MultiTaskConfig, DEMO3).tasks)
    config = load_config(MultiTaskConfig, DEMO3, task_overrides(shards, n_tasks) + [
        f"run_dir={run_dir}", f"trainer.max_steps={STEPS}", "data.num_workers=0", "data.shuffle_buffer=200",
        "data.epoch_samples=3840",  # 120 steps an epoch: validate twice, not every 10 steps
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=20"])
    torch.manual_seed(0)
    return fit_multitask(config), run_dir


def chance_level(shards: Path, field: str) -> float:
    """Accuracy of always answering the commonest validation value (the best constant guess)."""
    names, _ = scan_field(resolve_shards(str(shards / "valid")).urls, field)
    return max(names.values()) / sum(names.values())


@pytest.mark.slow
def test_every_task_beats_chance(trained, shards: Path) -> None:
    module, _ = trained
    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items() if k.startswith("val/")}
    checked = Counter()
    for task in module.config.tasks:
        if task.kind == "single":
            chance = chance_level(shards, task.label_field)
            assert metrics[f"val/{task.name}/acc"] > chance + 0.05, (task.name, metrics, chance)
        else:  # regression: predicting the training mean scores r2 ~ 0
            assert metrics[f"val/{task.name}/r2"] > 0.2, (task.name, metrics)
        checked[task.kind] += 1
    assert checked["single"] >= 3 and checked["regression"] == 1


@pytest.mark.slow
def test_multitask_encoder_starts_a_contrastive_fit(trained, shards: Path, tmp_path: Path) -> None:
    _, run_dir = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    encoder_state = load_audio_encoder_state(ckpt)
    overrides = demo_overrides(shards, tmp_path / "clap", steps=2) + [
        f"model.audio_encoder_init={ckpt}", "optim.lr=1e-9", "optim.weight_decay=0", "trainer.val_check_interval=null"]
    config = load_config(ExperimentConfig, DEMO_EXPERIMENT, overrides)

    clap = ClapPretraining(config)
    init_audio_encoder(clap.model.audio_encoder, ckpt)  # what run_stage does for a fresh fit
    loaded = clap.model.audio_encoder.state_dict()
    assert loaded.keys() == encoder_state.keys()
    assert all(torch.equal(loaded[k], encoder_state[k]) for k in encoder_state)

    run_stage("fit", config)
    after = torch.load(tmp_path / "clap" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert after["global_step"] == 2
    fresh = ClapPretraining(load_config(ExperimentConfig, DEMO_EXPERIMENT, demo_overrides(shards, tmp_path / "fresh")))
    for name, param in fresh.model.audio_encoder.named_parameters():
        trained_value = after["state_dict"][f"model.audio_encoder.{name}"]
        # Two steps at lr 1e-9 leave the multi-task weights in place, far from a fresh initialisation.
        assert torch.allclose(trained_value, encoder_state[name], atol=1e-6), name
    differs = [n for n, p in fresh.model.audio_encoder.named_parameters()
               if p.requires_grad and not torch.allclose(p, encoder_state[n], atol=1e-3)]
    assert len(differs) > 10
    stored = (tmp_path / "clap" / "config.yaml").read_text()
    assert f"audio_encoder_init: {ckpt}" in stored


def test_cli_refuses_a_bad_task_key(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "clap_lightning.cli", "multitask", "fit", "--config", str(DEMO3),
                           "tasks.0.lable_field=x"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "tasks[0].lable_field" in done.stderr.strip().splitlines()[-1]
