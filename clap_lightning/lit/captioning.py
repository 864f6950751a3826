"""CaptioningModule: trains the mapper (optionally GPT2) on cached CLAP embeddings; glue only.

Nothing here is rank-specific: under DDP each rank reads its DistributedSampler share of
the cache and gradients are averaged as usual (the captioning loss is a per-sample mean,
so no cross-rank gather is needed, unlike the contrastive loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from clap_lightning.checkpoint import CAPTIONING, check_resumable, load_state_or_refuse, read_lightning_checkpoint
from clap_lightning.config import config_from, to_container
from clap_lightning.eval.caption_metrics import compute_caption_metrics
from clap_lightning.lit.caption_data import CaptionDataModule, read_embedding_cache
from clap_lightning.lit.captioning_config import CaptioningConfig
from clap_lightning.lit.optim import build_optimizer
from clap_lightning.lit.run import build_trainer
from clap_lightning.models.captioner import Captioner, caption_audio
from clap_lightning.models.decoding import DecodingConfig


class CaptioningModule(L.LightningModule):
    """Teacher-forced captioning loss on [prefix ; caption]; only trainable parameters are optimised.

    The resolved config is the only hyperparameter, so `load_captioner(path)` rebuilds the model.
    """

    def __init__(self, config: CaptioningConfig | dict) -> None:
        super().__init__()
        config = config_from(CaptioningConfig, config, "stored config")
        self.save_hyperparameters({"config": to_container(config)})
        self.config = config
        self.captioner = Captioner(config.captioner)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.captioner.compute_loss(batch["audio_emb"], batch["input_ids"], batch["attention_mask"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["audio_emb"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["audio_emb"].shape[0])
        return loss

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return build_optimizer(self.captioner, self.config.optim, int(total))


def fit_captioning(config: CaptioningConfig, ckpt_path: Optional[str] = None) -> CaptioningModule:
    """Train a captioner on the configured embedding caches with the configured Trainer."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = CaptioningModule(config)
    datamodule = CaptionDataModule(config.data, module.captioner.tokenizer)
    if ckpt_path:
        check_resumable(ckpt_path, module, CAPTIONING)
    trainer = build_trainer(config, config.data.batch_size)
    if not config.data.val:  # no validation cache: no validation loop (not an empty one Lightning warns about)
        trainer.limit_val_batches = 0
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module


def load_captioner(path: str | Path, map_location: str = "cpu") -> tuple[Captioner, CaptioningConfig]:
    """Rebuild a `Captioner` from a `CaptioningModule` checkpoint, with one-line errors."""
    checkpoint, stored = read_lightning_checkpoint(path, map_location, kind=CAPTIONING)
    config = config_from(CaptioningConfig, stored, "stored config")
    captioner = Captioner(config.captioner)
    state = {k[len("captioner."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("captioner.")}
    load_state_or_refuse(captioner, state, path)
    return captioner.eval(), config


def evaluate_captioning(captioner: Captioner, cache_path: str | Path, decoding: Optional[DecodingConfig] = None,
                        batch_size: int = 32) -> tuple[dict[str, float], list[str]]:
    """Caption every clip of an embedding cache and score against its captions (one process).

    Returns:
        (BLEU/ROUGE-L/CIDEr-D scores, the generated captions in cache order).
    """
    cache = read_embedding_cache(cache_path)
    captions = caption_audio(captioner, audio_emb=cache["audio_emb"], decoding=decoding, batch_size=batch_size)
    return compute_caption_metrics(captions, cache["captions"]), captions
