"""ClapDataModule: WebDataset shards -> batches of audio, tokens and metadata."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any, Optional, Sequence

import lightning as L
import torch

from clap_lightning.config import DataConfig, ExperimentConfig, ModelConfig, pretraining_batch_size
from clap_lightning.data.augment import WaveAugment
from clap_lightning.audio.frontend import frames_for, frontend_differences, frontend_params
from clap_lightning.data.pipeline import ClapLoader, ClapStream, ClipDecoder, Collate, LogMelDecoder
from clap_lightning.data.sources import ShardSource, feature_frontend, resolve_shards
from clap_lightning.encoders.registry import AUDIO_ENCODERS, build_caption_tokenizer, import_builtin_encoders
from clap_lightning.errors import DataError
from clap_lightning.models.clap import split_name

log = logging.getLogger(__name__)
STATE_VERSION = 1  # bumped when the layout of `state_dict()` changes


class ClapDataModule(L.LightningDataModule):
    """Reads shards lazily: nothing is opened before the loaders are requested.

    Training mixes `data.train_sources` (or the single `data.train`) in proportion to their
    weights, resampling shards; an epoch is `data.epoch_samples` samples (default: the
    manifests' total), cut into the same number of full batches on every rank and worker.
    Validation and test read every shard exactly once, split by rank then by worker.
    `batch_size` is per device (`config.local_batch_size` derives it from `data.global_batch_size`).

    Resume guarantee. The training stream of worker w on rank r in epoch e is a pure function
    of (data.seed, e, r, w) and the shard lists; each training batch carries the stream
    position where it ended, and `state_dict()` (saved by Lightning in every checkpoint)
    holds, per rank and worker, the batches consumed by training steps and that position.
    A run resumed from a mid-epoch checkpoint regenerates each worker's stream, skips the
    consumed raw samples without decoding them, and yields only the remaining batches, so
    over that epoch every batch is trained on exactly once, with the same samples, crops
    and captions as an uninterrupted run (only the interleaving of the workers' batches in
    the resumed epoch may differ). This holds when world size, workers per rank, per-device
    batch, epoch length, seed, shuffle buffer and sources are unchanged; otherwise the
    resumed run warns and starts the next epoch's stream instead (no prefix replay).
    """

    def __init__(self, model: ModelConfig, data: DataConfig, batch_size: int, label_field: str = "labels") -> None:
        super().__init__()
        self.model_config = model  # text encoder (tokenizer), sample rate and clip length
        self.data_config = data
        self.batch_size = batch_size
        self.label_field = label_field  # json field of the class labels (`data.label_field`)
        self.tokenizer = None
        self.skipped: Counter = Counter()  # bad samples dropped by training workers, this rank
        self.samples_by_source: Counter = Counter()  # training samples per json `source`, this rank
        self._progress: dict[str, Any] = {"epoch": None, "workers": {}}  # of batches consumed by training
        self._fingerprint: Optional[str] = None
        self._restored: Optional[dict] = None

    @classmethod
    def for_pretraining(cls, config: ExperimentConfig) -> ClapDataModule:
        """The DataModule of a contrastive pretraining run."""
        return cls(config.model, config.data, pretraining_batch_size(config), config.data.label_field)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = build_caption_tokenizer(*split_name(self.model_config.text_encoder))

    def _rank_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _decoder_collate(self, is_train: bool, sources: Sequence[tuple[str, ShardSource]] = ()
                         ) -> tuple[ClipDecoder, Collate]:
        """The decoder of `sources` ((spec, resolved shards)): waveforms, or log-mel features when their
        manifests say so (`python -m data_recipes prepare --format logmel`), for this model's front end only."""
        model = self.model_config
        frontend = self._feature_frontend(sources)
        if frontend is not None:
            decoder = LogMelDecoder(frames_for(model.clip_samples, frontend["hop_length"]), frontend["n_mels"],
                                    self.data_config.pad_mode, is_train)
        else:
            decoder = ClipDecoder(model.sample_rate, model.clip_samples, self.data_config.pad_mode, is_train)
        return decoder, Collate(self.tokenizer, self.label_field, cut_to_longest=self.data_config.pad_mode == "none")

    def _feature_frontend(self, sources: Sequence[tuple[str, ShardSource]]) -> Optional[dict]:
        """The model's front end when `sources` are log-mel shards made by it; None for waveform shards.

        Raises:
            DataError: one line: sources that mix log-mel and waveform shards, features made by another
                front end (naming each differing parameter), or settings the feature path cannot honour.
        """
        recorded = [(spec, feature_frontend(source, spec)) for spec, source in sources]
        if all(frontend is None for _, frontend in recorded):
            return None
        if any(frontend is None for _, frontend in recorded):
            raise DataError("the training sources mix log-mel and waveform shards: prepare every source "
                            "(`python -m data_recipes prepare --format logmel`) or none")
        import_builtin_encoders()
        encoder = AUDIO_ENCODERS.parse_config(*split_name(self.model_config.audio_encoder), where="model.audio_encoder")
        try:
            expected = frontend_params(encoder)
        except ValueError as err:
            raise DataError(f"log-mel shards, but model.audio_encoder has no log-mel front end: {err}") from None
        if expected["sample_rate"] != self.model_config.sample_rate:
            raise DataError(f"model.sample_rate {self.model_config.sample_rate} differs from the audio encoder's "
                            f"{expected['sample_rate']}: log-mel shards need them equal")
        for spec, frontend in recorded:
            differing = frontend_differences(frontend, expected)
            if differing:
                raise DataError(f"{spec} holds log-mel features of another front end than the model's: "
                                f"{'; '.join(differing)}; prepare them again with this model's config "
                                "(`python -m data_recipes prepare --model-config ...`) or train on the FLAC shards")
        data = self.data_config
        if self._wave_augment().is_active:
            raise DataError("data.augment works on waveforms, and these shards hold log-mel features: "
                            "turn the waveform augmentations off or train on the FLAC shards")
        if data.pad_mode != "repeat" and getattr(encoder, "mask_padding", False):
            raise DataError(f"data.pad_mode {data.pad_mode} with mask_padding needs waveform shards: the model does "
                            "not mask padded log-mel frames; use data.pad_mode repeat")
        return expected

    def _make_loader(self, stream: ClapStream, workers: int, persistent: bool) -> ClapLoader:
        return ClapLoader(stream, batch_size=None, num_workers=workers, persistent_workers=persistent and workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> ClapLoader:
        data = self.data_config
        rank, world = self._rank_world()
        sources = [(resolve_shards(s.shards), s.weight) for s in data.training_sources()]
        counts = [source.num_samples for source, _ in sources]
        epoch_samples = data.epoch_samples or (sum(counts) if None not in counts else 0)
        if not epoch_samples:
            raise DataError("data.epoch_samples is 0 and the train shards have no manifest to count samples from")
        workers = data.num_workers
        batches_per_worker = max(1, epoch_samples // (self.batch_size * world * max(1, workers)))
        urls = [source.urls for source, _ in sources]
        weights = [weight for _, weight in sources]
        self._fingerprint = _fingerprint(urls, weights, world, workers, self.batch_size, batches_per_worker,
                                         data.seed, data.shuffle_buffer, self._bucket_batches())
        start_epoch, resume = self._resume_point(rank, workers, batches_per_worker)
        decoder, collate = self._decoder_collate(True, [(s.shards, source) for s, (source, _) in
                                                        zip(data.training_sources(), sources)])
        stream = ClapStream(urls, decoder, collate, self.batch_size, is_train=True, weights=weights, seed=data.seed,
                            rank=rank, world_size=world, shuffle_buffer=data.shuffle_buffer,
                            batches_per_worker=batches_per_worker, num_workers=workers, start_epoch=start_epoch,
                            resume=resume, name=" + ".join(s.shards for s in data.training_sources()),
                            augment=self._wave_augment(), bucket_batches=self._bucket_batches())
        # Persistent workers keep their stream's epoch counter (and resampler) between epochs.
        return self._make_loader(stream, workers, persistent=True)

    def _bucket_batches(self) -> int:
        """Batches per duration-sorted pool: only batches cut to their longest clip gain from it."""
        return self.data_config.bucket_batches if self.data_config.pad_mode == "none" else 0

    def _wave_augment(self) -> WaveAugment:
        augment, model = self.data_config.augment, self.model_config
        noise_urls = resolve_shards(augment.noise_shards).urls if augment.noise_prob > 0 else []
        return WaveAugment(augment, noise_urls, model.sample_rate, model.clip_samples, self.label_field)

    def _resume_point(self, rank: int, workers: int, batches_per_worker: int) -> tuple[int, Optional[dict]]:
        """(first epoch, resume positions) from a restored state, or from the trainer's epoch."""
        state, self._restored = self._restored, None
        if not state or state.get("epoch") is None:
            return (self.trainer.current_epoch if self.trainer is not None else 0), None
        epoch = state["epoch"]
        if state.get("fingerprint") != self._fingerprint or rank >= len(state["ranks"]):
            log.warning("the data settings differ from the checkpoint's; resuming with the stream of epoch %d "
                        "instead of fast-forwarding epoch %d", epoch + 1, epoch)
            return epoch + 1, None
        consumed = [list(state["ranks"][rank].get(w, (0, 0))) for w in range(max(1, workers))]
        if all(worker[0] >= batches_per_worker for worker in consumed):
            return epoch + 1, None  # the checkpoint closed the epoch
        return epoch, {"epoch": epoch, "workers": consumed}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record how far training has consumed each worker's stream; total the skipped samples."""
        if isinstance(batch, dict) and "stream" in batch:
            where = batch.pop("stream")
            if where["epoch"] != self._progress["epoch"]:
                self._progress = {"epoch": where["epoch"], "workers": {}}
            self._progress["workers"][where["worker"]] = (where["batches"], where["position"], where.get("pool", 0))
            self.skipped.update(batch.get("skipped", {}))
            batch["skipped"] = dict(self.skipped)  # running totals, logged as data/skipped_<reason>
            self.samples_by_source.update(batch.get("source", []))
            batch["samples_by_source"] = dict(self.samples_by_source)  # logged as data/samples_<source>
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Per rank and worker: (batches consumed, stream position, batches of its pool consumed) this epoch.

        Lightning calls this on every rank while saving a checkpoint, so the ranks' positions
        are gathered here; only rank 0 writes the file.
        """
        ranks = [self._progress["workers"]]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, self._progress["workers"])
        return {"version": STATE_VERSION, "epoch": self._progress["epoch"], "ranks": ranks,
                "fingerprint": self._fingerprint, "skipped": dict(self.skipped),
                "samples_by_source": dict(self.samples_by_source)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != STATE_VERSION:
            log.warning("ignoring data-loader state of version %s (expected %s)", state_dict.get("version"),
                        STATE_VERSION)
            return
        self._restored = state_dict
        rank, _ = self._rank_world()
        ranks = state_dict["ranks"]
        self._progress = {"epoch": state_dict["epoch"], "workers": dict(ranks[rank] if rank < len(ranks) else {})}
        self.skipped = Counter(state_dict.get("skipped", {}))
        self.samples_by_source = Counter(state_dict.get("samples_by_source", {}))

    def _eval_loader(self, spec: str) -> ClapLoader:
        data = self.data_config
        rank, world = self._rank_world()
        source = resolve_shards(spec)
        urls = source.urls
        workers = min(data.num_workers, max(1, len(urls[rank::world])))
        decoder, collate = self._decoder_collate(False, [(spec, source)])
        stream = ClapStream([urls], decoder, collate, data.eval_batch_size, is_train=False, rank=rank,
                            world_size=world, name=spec)
        return self._make_loader(stream, workers, persistent=False)

    def val_dataloader(self) -> ClapLoader | list:
        # No validation shards configured: an empty list tells Lightning to skip validation.
        return self._eval_loader(self.data_config.val) if self.data_config.val else []

    def test_dataloader(self) -> ClapLoader:
        return self._eval_loader(self.data_config.test)


def _fingerprint(*parts: Any) -> str:
    """A short hash of everything that shapes the training streams."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
