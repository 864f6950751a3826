"""ClapPretraining: the contrastive pretraining LightningModule (glue: encode, gather, loss, log)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from clap_lightning.config import ExperimentConfig, from_container, to_container
from clap_lightning.lit.optim import build_optimizer
from clap_lightning.models.clap import CLAP
from clap_lightning.objectives import ContrastiveObjective, compute_logits, symmetric_infonce


class ClapPretraining(L.LightningModule):
    """Contrastive language-audio pretraining of a `CLAP` model.

    The resolved experiment config is saved as the only hyperparameter, so every checkpoint
    carries it and `ClapPretraining.load_from_checkpoint(path)` rebuilds the same model.
    """

    def __init__(self, config: ExperimentConfig | dict) -> None:
        super().__init__()
        config = from_container(config) if isinstance(config, dict) else config
        self.save_hyperparameters({"config": to_container(config)})
        self.config = config
        self.model = CLAP(config.model)
        self.objective = ContrastiveObjective()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        audio_emb, text_emb, logit_scale = self.model(batch["audio"], batch["input_ids"], batch["attention_mask"])
        out = self.objective(audio_emb, text_emb, logit_scale)
        self.log_dict({"train/loss": out.loss, "train/a2t_acc": out.a2t_acc, "train/t2a_acc": out.t2a_acc},
                      prog_bar=True, batch_size=audio_emb.shape[0])
        self.log("train/logit_scale", logit_scale.detach().exp().squeeze(), batch_size=audio_emb.shape[0])
        # Pairs in the contrastive batch (world size x local batch): proves the gather spans every rank.
        self.log("train/global_batch", float(out.global_batch_size), batch_size=audio_emb.shape[0])
        return out.loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        # Evaluation batches may be partial and differ across ranks, so the loss is per rank.
        audio_emb, text_emb, logit_scale = self.model(batch["audio"], batch["input_ids"], batch["attention_mask"])
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
