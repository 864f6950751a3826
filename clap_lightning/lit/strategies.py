"""Training strategies selected by config: DDP by default, DeepSpeed ZeRO 1/2/3 from a JSON file.

    trainer.strategy: ddp                       # or auto: ddp on several devices
    trainer.strategy: deepspeed
    trainer.deepspeed_config: configs/deepspeed/zero2.json
    trainer.precision: bf16-mixed               # bf16 for DDP and DeepSpeed alike

The DeepSpeed JSON files carry only ZeRO settings. Lightning fills in what the rest of the
config already states: `gradient_accumulation_steps` (trainer.accumulate_grad_batches),
`gradient_clipping` (trainer.gradient_clip_val) and bf16 (trainer.precision); this module
fills `train_micro_batch_size_per_gpu` from the derived per-device batch. The optimizer is
the torch AdamW of `configure_optimizers`, which ZeRO partitions, so no DeepSpeed op
(FusedAdam, CPUAdam) is compiled. Activation checkpointing is per encoder:
`model.audio_encoder.use_checkpointing` and `model.text_encoder.use_checkpointing`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Union

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, Strategy
from torch.nn import Module
from torch.optim import Optimizer

from clap_lightning.config import TrainerConfig
from clap_lightning.errors import ConfigError

# Config sections Lightning or this module derive from the experiment config; a JSON that sets them would disagree.
DERIVED_KEYS = ("gradient_accumulation_steps", "train_batch_size", "optimizer", "scheduler")


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy, also on CPU processes over gloo (tests, laptops).

    Lightning refuses any accelerator but CUDA and passes the CUDA device index to
    DeepSpeed. On CPU this takes DDP's environment set-up, skips the device-index check
    and gives DeepSpeed the local rank instead; on GPUs it behaves as its parent.
    """

    def _is_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    def setup_environment(self) -> None:
        if not self._is_cpu():
            return super().setup_environment()
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is first imported
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        if not self._is_cpu():
            return super().setup_distributed()
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _device_rank(self) -> int:
        return self.local_rank if self._is_cpu() else self.root_device.index

    def _setup_model_and_optimizer(
        self, model: Module, optimizer: Optional[Optimizer], lr_scheduler: Optional[object] = None,
    ) -> tuple[object, Optimizer]:
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank()), config=self.config, model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad], optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False,
        )
        return engine, deepspeed_optimizer


def read_deepspeed_config(trainer: TrainerConfig, micro_batch_size: int) -> dict:
    """Load the DeepSpeed JSON and fill what the run's config decides, or refuse a contradiction.

    Args:
        trainer: names the JSON (`deepspeed_config`) and the precision it must agree with.
        micro_batch_size: the per-device batch (`train_micro_batch_size_per_gpu`).

    Raises:
        ConfigError: missing or unparsable file, a derived key set in the JSON, or a
            bf16/fp16 section that disagrees with `trainer.precision`.
    """
    path = Path(trainer.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"trainer.deepspeed_config: file not found: {path}")
    try:
        ds_config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"cannot parse {path}: {err}") from None
    derived = [key for key in DERIVED_KEYS if key in ds_config]
    if derived:
        raise ConfigError(f"{path}: remove {', '.join(derived)}; they follow from the trainer, data and optim sections")
    precision = trainer.precision
    for key, prefix in (("bf16", "bf16"), ("fp16", "16")):
        is_enabled = bool(ds_config.get(key, {}).get("enabled", False))
        if is_enabled != precision.startswith(prefix) and key in ds_config:
            raise ConfigError(f"{path}: {key}.enabled is {is_enabled} but trainer.precision is {precision}; "
                              f"drop the {key} section and let trainer.precision decide")
    ds_config.setdefault("train_micro_batch_size_per_gpu", micro_batch_size)
    return ds_config


def build_strategy(trainer: TrainerConfig, micro_batch_size: int) -> Union[str, Strategy]:
    """The Trainer's `strategy` argument: a DDP or DeepSpeed strategy object, or a name."""
    t = trainer
    if t.strategy == "deepspeed":
        return CPUDeepSpeedStrategy(config=read_deepspeed_config(t, micro_batch_size))
    # Lightning's auto may pick ddp_spawn or ddp_notebook; subprocess DDP is what SLURM runs.
    if t.strategy == "ddp" or (t.strategy == "auto" and t.devices * t.num_nodes > 1):
        # No buffer broadcast in forward: it is a collective per forward call, and evaluation ranks may
        # run different numbers of batches (each reads its own shards), which would hang. BatchNorm
        # running statistics stay per rank; rank 0's are checkpointed.
        return DDPStrategy(broadcast_buffers=False)
    return t.strategy
