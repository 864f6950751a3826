"""Supervised multi-task pretraining of the audio encoder (HTSAT-22): LightningModule, DataModule, fit.

One audio encoder (built from `model.audio_encoder`, as in CLAP) is trained with one head
per task on batches that mix the tasks' sources by temperature sampling. The checkpoint
keeps the encoder under `model.audio_encoder.`, so `model.audio_encoder_init: <ckpt>`
starts a contrastive `fit` from it (models/encoder_init.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from clap_lightning.checkpoint import MULTITASK, check_resumable, load_stored_state, read_lightning_checkpoint
from clap_lightning.config import config_from, local_batch_size, to_container
from clap_lightning.data.multitask import MultiTaskCollate
from clap_lightning.data.pipeline import ClapLoader, ClapStream, ClipDecoder
from clap_lightning.data.sources import resolve_shards
from clap_lightning.eval.metrics import accuracy, mean_average_precision
from clap_lightning.lit.checkpointing import resolve_ckpt_path
from clap_lightning.lit.datamodule import ClapDataModule
from clap_lightning.lit.multitask_config import (MultiTaskConfig, SourcePlan, head_specs, label_specs,
                                                 multitask_data_config, plan_sources,
                                                 resolve_tasks)
from clap_lightning.lit.optim import build_optimizer
from clap_lightning.lit.run import build_trainer, write_run_config
from clap_lightning.models.encoder_init import init_audio_encoder
from clap_lightning.models.multitask import MultiTaskClassifier, compute_multitask_loss
from clap_lightning.objectives.collectives import is_distributed, world_size


class MultiTaskPretraining(L.LightningModule):
    """Glue: encode -> one head per task -> masked multi-task loss -> log; per-task validation metrics.

    Validation keeps each task's labelled outputs and targets for the epoch, gathers them
    from every rank and logs `val/<task>/acc` (single), `val/<task>/mAP` (multi) or
    `val/<task>/r2` and `val/<task>/mse` (regression, in standardised units).
    The resolved config (classes included) is the only hyperparameter.
    """

    def __init__(self, config: MultiTaskConfig | dict) -> None:
        super().__init__()
        config = config_from(MultiTaskConfig, config, "stored config")
        self.save_hyperparameters({"config": to_container(config)})
        self.config = config
        self.specs = {spec.name: spec for spec in head_specs(config)}
        self.model = MultiTaskClassifier(config.model.audio_encoder, list(self.specs.values()), config.head_dropout)
        self._val_rows: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._val_loss = [0.0, 0]  # (sum of batch loss x clips, clips) over every validation loader

    def forward(self, audio: torch.Tensor, audio_length: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        return self.model(audio, audio_length)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self(batch["audio"], batch.get("audio_length"))
        loss, per_task = compute_multitask_loss(outputs, batch["targets"], batch["masks"], self.specs)
        size = batch["audio"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, task_loss in per_task.items():
            labelled = int(batch["masks"][name].sum())
            if labelled:  # a task absent from this batch has no loss to average in
                self.log(f"train/{name}/loss", task_loss, batch_size=labelled)
        for reason, count in batch.get("skipped", {}).items():
            self.log(f"data/skipped_{reason}", float(count), batch_size=size)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_rows = {name: ([], []) for name in self.specs}
        self._val_loss = [0.0, 0]
        if is_distributed() and world_size() > 1:
            # DDP runs without per-forward buffer broadcast (lit/strategies.py), so each rank's
            # BatchNorm statistics drifted apart; validate every rank with rank 0's, the checkpointed ones.
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        outputs = self(batch["audio"], batch.get("audio_length"))
        loss, _ = compute_multitask_loss(outputs, batch["targets"], batch["masks"], self.specs)
        # One `val/loss` over all loaders: logging it per step from several loaders (each task's own
        # validation shards, with their own batch sizes) is refused by Lightning.
        self._val_loss[0] += float(loss) * batch["audio"].shape[0]
        self._val_loss[1] += batch["audio"].shape[0]
        for name in self.specs:
            mask = batch["masks"][name].bool()
            if mask.any():
                self._val_rows[name][0].append(outputs[name][mask].detach().float().cpu())
                self._val_rows[name][1].append(batch["targets"][name][mask].detach().cpu())

    def on_validation_epoch_end(self) -> None:
        # Every rank logs (sync_dist is a collective); each rank reads some of every split.
        self.log("val/loss", self._val_loss[0] / max(1, self._val_loss[1]), sync_dist=True)
        for name, spec in self.specs.items():
            outputs, targets = (_gather_rows(rows) for rows in self._val_rows.get(name, ([], [])))
            if outputs is None:
                continue
            for metric, value in compute_task_metrics(spec.kind, outputs, targets).items():
                self.log(f"val/{name}/{metric}", value, rank_zero_only=False, sync_dist=False)
        self._val_rows = {}

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return build_optimizer(self.model, self.config.optim, int(total))


def _gather_rows(rows: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """This rank's rows concatenated with every other rank's (sizes may differ); None when there are none."""
    local = torch.cat(rows) if rows else None
    if is_distributed() and world_size() > 1:
        everyone: list[Optional[torch.Tensor]] = [None] * world_size()
        torch.distributed.all_gather_object(everyone, local)
        parts = [part for part in everyone if part is not None]
        return torch.cat(parts) if parts else None
    return local


def compute_task_metrics(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """acc (single), mAP (multi, classes without positives left out) or r2 and mse (regression)."""
    if kind == "single":
        return {"acc": accuracy(outputs, targets.long())}
    if kind == "multi":
        if not targets.sum():
            return {}
        return {"mAP": mean_average_precision(outputs, targets.long())}
    mse = (outputs - targets).square().mean().item()
    variance = targets.var(unbiased=False).item()
    return {"mse": mse, **({"r2": 1.0 - mse / variance} if variance > 0 else {})}


class MultiTaskDataModule(ClapDataModule):
    """The contrastive DataModule's weighted, resumable training stream, with multi-task labels.

    Training mixes the plan's sources with its temperature weights; validation has one loader
    per distinct validation spec, each labelling the tasks that name it.
    """

    def __init__(self, config: MultiTaskConfig, plan: SourcePlan) -> None:
        super().__init__(config.model, multitask_data_config(config, plan),
                         local_batch_size(config.data.global_batch_size, config.trainer))
        self.multitask = config
        self.plan = plan

    def setup(self, stage: Optional[str] = None) -> None:
        pass  # no tokenizer: targets come from the jsons

    def _decoder_collate(self, is_train: bool, sources=()) -> tuple[ClipDecoder, MultiTaskCollate]:
        # Multi-task training reads waveform shards only (its heads run the model's front end).
        model = self.model_config
        decoder = ClipDecoder(model.sample_rate, model.clip_samples, self.data_config.pad_mode, is_train)
        return decoder, MultiTaskCollate(label_specs(self.multitask, self.plan.train, "train"))

    def _val_loader(self, index: int, spec: str) -> ClapLoader:
        data = self.data_config
        rank, world = self._rank_world()
        urls = resolve_shards(spec).urls
        model = self.model_config
        decoder = ClipDecoder(model.sample_rate, model.clip_samples, data.pad_mode, is_train=False)
        collate = MultiTaskCollate(label_specs(self.multitask, self.plan.val, "val"), source=index)
        stream = ClapStream([urls], decoder, collate, data.eval_batch_size, is_train=False, rank=rank,
                            world_size=world, name=spec)
        return self._make_loader(stream, min(data.num_workers, max(1, len(urls[rank::world]))), persistent=False)

    def val_dataloader(self) -> list[ClapLoader]:
        return [self._val_loader(i, spec) for i, spec in enumerate(self.plan.val)]


def fit_multitask(config: MultiTaskConfig, ckpt_path: Optional[str] = None) -> MultiTaskPretraining:
    """Resolve classes, plan the sources, then train; every check happens before a batch is read."""
    ckpt_path = resolve_ckpt_path(ckpt_path, config.run_dir, "fit")  # "auto": newest complete checkpoint, or fresh
    config = resolve_tasks(config)
    plan = plan_sources(config)
    batch_size = local_batch_size(config.data.global_batch_size, config.trainer)  # refuse one that does not divide
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = MultiTaskPretraining(config)
    if config.model.audio_encoder_init and not ckpt_path:
        init_audio_encoder(module.model.audio_encoder, config.model.audio_encoder_init)
    if ckpt_path:
        check_resumable(ckpt_path, module, MULTITASK)
    trainer = build_trainer(config, batch_size)
    write_run_config(config)
    trainer.fit(module, datamodule=MultiTaskDataModule(config, plan), ckpt_path=ckpt_path)
    return module


def load_multitask(path: str | Path, map_location: str = "cpu") -> MultiTaskPretraining:
    """Rebuild a `MultiTaskPretraining` from its checkpoint, with one-line errors."""
    checkpoint, stored = read_lightning_checkpoint(path, map_location, kind=MULTITASK)
    module = MultiTaskPretraining(stored)
    return load_stored_state(module, checkpoint, path)
