"""ClapDataModule: WebDataset shards -> batches of audio, tokens and metadata."""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
import webdataset as wds

from clap_lightning.config import ExperimentConfig, local_batch_size
from clap_lightning.data.pipeline import ClipDecoder, Collate, build_pipeline
from clap_lightning.data.sources import resolve_shards
from clap_lightning.errors import DataError
from clap_lightning.models.clap import split_name
from clap_lightning.encoders.registry import build_caption_tokenizer


class ClapDataModule(L.LightningDataModule):
    """Reads shards lazily: nothing is opened before `setup()`.

    The per-device batch is derived from `data.global_batch_size` (see `local_batch_size`).
    """

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__()
        self.config = config
        self.batch_size = local_batch_size(config)
        self.tokenizer = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = build_caption_tokenizer(*split_name(self.config.model.text_encoder))

    def _loader(self, spec: str, is_train: bool) -> wds.WebLoader:
        data, model = self.config.data, self.config.model
        source = resolve_shards(spec)
        batch_size = self.batch_size if is_train else data.eval_batch_size
        workers = max(1, min(data.num_workers, len(source.urls))) if data.num_workers else 0
        batches_per_worker = 0
        if is_train:
            world = self.trainer.world_size if self.trainer is not None else 1
            epoch_samples = data.epoch_samples or source.num_samples
            if not epoch_samples:
                raise DataError(f"data.epoch_samples is 0 and {spec} has no manifest to count samples from")
            batches_per_worker = max(1, epoch_samples // (batch_size * world * max(1, workers)))
        decoder = ClipDecoder(model.sample_rate, model.clip_samples, data.pad_mode, is_train)
        collate = Collate(self.tokenizer, is_train, self.config.zeroshot.label_field)
        pipeline = build_pipeline(source.urls, decoder, collate, batch_size, is_train,
                                  data.shuffle_buffer, batches_per_worker)
        return wds.WebLoader(pipeline, batch_size=None, num_workers=workers,
                             persistent_workers=is_train and workers > 0,
                             pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> wds.WebLoader:
        return self._loader(self.config.data.train, is_train=True)

    def val_dataloader(self) -> wds.WebLoader | list:
        # No validation shards configured: an empty list tells Lightning to skip validation.
        return self._loader(self.config.data.val, is_train=False) if self.config.data.val else []

    def test_dataloader(self) -> wds.WebLoader:
        return self._loader(self.config.data.test, is_train=False)
