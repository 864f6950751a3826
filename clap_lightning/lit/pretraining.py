"""ClapPretraining: the contrastive pretraining LightningModule (glue: encode, gather, loss, log)."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from clap_lightning.config import ExperimentConfig, config_from, to_container
from clap_lightning.lit.gradcache import gradcache_backward, split_batch
from clap_lightning.lit.optim import build_optimizer
from clap_lightning.models.clap import CLAP, compile_encoders
from clap_lightning.objectives import (ContrastiveObjective, ContrastiveOutput, compute_logit_scale, compute_logits,
                                       symmetric_infonce)


class ClapPretraining(L.LightningModule):
    """Contrastive language-audio pretraining of a `CLAP` model.

    The resolved experiment config is saved as the only hyperparameter, so every checkpoint
    carries it and `ClapPretraining.load_from_checkpoint(path)` rebuilds the same model.
    """

    def __init__(self, config: ExperimentConfig | dict) -> None:
        super().__init__()
        config = config_from(ExperimentConfig, config, "stored config") if isinstance(config, dict) else config
        self.save_hyperparameters({"config": to_container(config)})
        self.config = config
        self.model = CLAP(config.model)
        if config.model.compile:
            compile_encoders(self.model)
        self.objective = ContrastiveObjective(use_local_loss=config.objective.use_local_loss,
                                              false_negatives=config.objective.false_negatives)
        self.frozen_towers = [name for name, is_frozen in (
            ("audio_encoder", config.objective.freeze_audio_encoder),
            ("text_encoder", config.objective.freeze_text_encoder)) if is_frozen]
        for name in self.frozen_towers:
            # Parameters without grad make autograd record nothing through the tower: no activations
            # kept, no backward; DDP and the optimizer skip them.
            getattr(self.model, name).requires_grad_(False).eval()
        # GradCache runs several forwards and backwards per step, which only manual optimization allows.
        self.automatic_optimization = config.objective.accumulation != "gradcache"

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (audio_emb [B, D], text_emb [B, D], raw logit_scale [1]) for a batch."""
        # Log-mel training shards give `logmel` [B, frames, n_mels] instead of `audio` [B, T]
        # (the front end ran in `prepare`).
        return self.model(batch.get("audio"), batch["input_ids"], batch["attention_mask"], batch.get("audio_length"),
                          logmel=batch.get("logmel"))

    def train(self, mode: bool = True) -> "ClapPretraining":
        """Set train mode, keeping frozen towers in eval mode (no dropout, fixed norm statistics).

        Lightning restores each submodule's mode after validation rather than calling this, so
        the towers are also put in eval mode once at construction.
        """
        super().train(mode)
        for name in self.frozen_towers:
            getattr(self.model, name).eval()
        return self

    def on_fit_start(self) -> None:
        accumulation = self.config.trainer.accumulate_grad_batches
        if self.automatic_optimization and accumulation > 1:
            rank_zero_warn(
                f"plain gradient accumulation over {accumulation} micro-batches: each contrastive batch holds "
                f"{self.config.data.global_batch_size // accumulation} pairs, not data.global_batch_size "
                f"{self.config.data.global_batch_size}; objective.accumulation=gradcache keeps them all as negatives")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not self.automatic_optimization:
            return self._gradcache_step(batch)
        audio_emb, text_emb, logit_scale = self(batch)
        out = self.objective(audio_emb, text_emb, logit_scale, batch.get("group_ids"))
        self._log_train(out, logit_scale, batch)
        return out.loss

    def _gradcache_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One optimizer step whose contrastive batch spans all `accumulate_grad_batches` micro-batches."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        chunks = split_batch(batch, self.config.trainer.accumulate_grad_batches)
        no_sync = getattr(self.trainer.model, "no_sync", contextlib.nullcontext)  # DDP's, when wrapped in DDP
        out, logit_scale = gradcache_backward(self, chunks, self.objective, self.manual_backward, no_sync)
        if self.config.trainer.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.config.trainer.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        self._log_train(out, logit_scale, batch)
        return out.loss

    def _log_train(self, out: ContrastiveOutput, logit_scale: torch.Tensor, batch: dict[str, Any]) -> None:
        # Local loss: each rank holds its rows' share, whose mean over ranks is the global-batch loss.
        self.log("train/loss", out.loss, prog_bar=True, sync_dist=self.objective.use_local_loss,
                 batch_size=out.global_batch_size)
        self.log_dict({"train/a2t_acc": out.a2t_acc, "train/t2a_acc": out.t2a_acc,
                       "train/logit_scale": compute_logit_scale(logit_scale.detach()).squeeze()},
                      batch_size=out.global_batch_size)
        # Pairs in the contrastive batch (world size x local batch): shows the gather spans every rank.
        self.log("train/global_batch", float(out.global_batch_size), batch_size=out.global_batch_size)
        for reason, count in batch.get("skipped", {}).items():  # this rank's running totals of bad samples
            self.log(f"data/skipped_{reason}", float(count), batch_size=out.global_batch_size)
        for source, count in batch.get("samples_by_source", {}).items():  # this rank's running totals per source
            self.log(f"data/samples_{source}", float(count), batch_size=out.global_batch_size)

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        # Evaluation batches may be partial and differ across ranks, so the loss is per rank.
        audio_emb, text_emb, logit_scale = self(batch)
        logits = compute_logits(audio_emb, text_emb, logit_scale)
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = symmetric_infonce(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return build_optimizer(self.model, self.config.optim, int(total))
