"""Captioning run config: the captioner, its embedding caches, optimiser, trainer and decoding defaults.

A captioning YAML composes like an experiment YAML; `load_config(CaptioningConfig, path, overrides)`
reads it, and `config_from(CaptioningConfig, stored)` rebuilds one from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clap_lightning.config import OptimConfig, RunConfig, bounded
from clap_lightning.models.captioner import CaptionerConfig
from clap_lightning.models.decoding import DecodingConfig


@dataclass
class CaptionDataConfig:
    """Where the embedding caches are and how batches are made."""

    train: str = ""  # train cache (.pt written by `write_embedding_cache`)
    val: str = ""  # validation cache ("" = no validation)
    batch_size: int = bounded(64, ge=1)  # (clip, caption) pairs per device per step
    num_workers: int = bounded(0, ge=0)  # loader worker processes per device (the data is in memory; 0 is usually best)


@dataclass
class CaptioningConfig(RunConfig):
    """A captioning run: the captioner, its data (embedding caches), optimiser, trainer, decoding."""

    name: str = "captioning"  # run name
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, weight_decay=0.01, warmup_steps=500))
    clap_checkpoint: str = ""  # the CLAP checkpoint whose audio embeddings the mapper reads (for inference)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)  # defaults for `caption` and evaluation
