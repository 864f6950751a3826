"""Checkpoints built in-process (no training run): what `Trainer.fit` would save, minus optimizer contents."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from clap_lightning.config import ExperimentConfig, load_config, to_container

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "experiment" / "demo.yaml"


def pretraining_checkpoint(overrides: Sequence[str] = ()) -> dict:
    """A resumable-looking checkpoint of the tiny demo model, built from `configs/experiment/demo.yaml`."""
    from clap_lightning.lit.pretraining import ClapPretraining

    config = load_config(ExperimentConfig, DEMO, list(overrides))
    module = ClapPretraining(config)
    return {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.0", "loops": {},
            "state_dict": module.state_dict(), "optimizer_states": [], "lr_schedulers": [],
            "hyper_parameters": {"config": to_container(config)}}


def save(checkpoint: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
