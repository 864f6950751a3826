"""WebDataset pipelines: shards -> decoded, cropped clips with captions -> tokenized batches.

Every per-sample step is a small picklable class so it runs inside loader workers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any, Iterator, Optional

import numpy as np
import torch
import webdataset as wds

from clap_lightning.audio.io import Resampler, fit_length, read_clip

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")


class ClipDecoder:
    """Turn a raw tar sample into {audio [T], length, texts, key, meta}, or None when it is bad.

    Args:
        sample_rate: model rate; clips at another rate are resampled.
        clip_samples: samples per clip at `sample_rate`.
        pad_mode: "repeat" or "zero" for short clips.
        is_train: random crop (train) or a crop from the start (evaluation, deterministic).
    """

    def __init__(self, sample_rate: int, clip_samples: int, pad_mode: str, is_train: bool) -> None:
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.pad_mode = pad_mode
        self.is_train = is_train
        self.skipped: Counter = Counter()
        self._resampler: Optional[Resampler] = None
        self._rng: Optional[np.random.Generator] = None

    def _skip(self, reason: str, key: str) -> None:
        self.skipped[reason] += 1
        if sum(self.skipped.values()) <= 5:
            log.warning("skipping sample %s: %s", key, reason)

    def __call__(self, sample: dict[str, Any]) -> Optional[dict[str, Any]]:
        if self._resampler is None:  # built lazily, once per worker process
            self._resampler = Resampler(self.sample_rate)
            self._rng = np.random.default_rng(torch.initial_seed() % 2**63) if self.is_train else None
        key = sample.get("__key__", "?")
        try:
            meta = json.loads(sample["json"])
        except (KeyError, ValueError):
            return self._skip("bad_json", key)
        texts = [t for t in meta.get("text") or [] if isinstance(t, str) and t.strip()]
        if not texts:
            return self._skip("empty_text", key)
        data = next((sample[ext] for ext in AUDIO_EXTENSIONS if ext in sample), None)
        if data is None:
            return self._skip("missing_audio", key)
        try:
            audio, rate, _ = read_clip(data, self._frames_at(meta.get("sample_rate")), self._rng)
        except (RuntimeError, ValueError, EOFError):  # soundfile raises LibsndfileError (a RuntimeError)
            return self._skip("bad_audio", key)
        if audio.size == 0 or not np.isfinite(audio).all():
            return self._skip("empty_or_nan_audio", key)
        clip, length = fit_length(self._resampler(torch.from_numpy(audio), rate), self.clip_samples, self.pad_mode)
        return {"audio": clip, "length": length, "texts": texts, "key": key, "meta": meta}

    def _frames_at(self, rate: Optional[int]) -> Optional[int]:
        """Frames to read at the file's rate; read everything when the json does not state it."""
        if not rate:
            return None
        return -(-self.clip_samples * int(rate) // self.sample_rate) + 1


def drop_none(samples: Iterator[Optional[dict]]) -> Iterator[dict]:
    for sample in samples:
        if sample is not None:
            yield sample


class Collate:
    """Stack clips and tokenize one caption per clip (random in training, the first otherwise)."""

    def __init__(self, tokenizer, is_train: bool, label_field: str = "labels") -> None:
        self.tokenizer = tokenizer
        self.is_train = is_train
        self.label_field = label_field
        self._rng: Optional[np.random.Generator] = None

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.is_train and self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed() % 2**63 + 1)
        if self.is_train:
            captions = [s["texts"][int(self._rng.integers(len(s["texts"])))] for s in samples]
        else:
            captions = [s["texts"][0] for s in samples]
        tokens = self.tokenizer(captions)
        return {
            "audio": torch.stack([s["audio"] for s in samples]),  # [B, T]
            "audio_length": torch.tensor([s["length"] for s in samples]),  # [B]
            "input_ids": tokens["input_ids"],  # [B, L]
            "attention_mask": tokens["attention_mask"],  # [B, L]
            "key": [s["key"] for s in samples],
            "source": [s["meta"].get("source", "") for s in samples],
            "labels": [list(s["meta"].get(self.label_field) or []) for s in samples],
            "captions": captions,
        }


def build_pipeline(
    urls: list[str],
    decoder: ClipDecoder,
    collate: Collate,
    batch_size: int,
    is_train: bool,
    shuffle_buffer: int = 0,
    batches_per_worker: int = 0,
) -> wds.DataPipeline:
    """The shard-reading pipeline.

    Training resamples shards forever and is cut into epochs of `batches_per_worker`, so every
    rank and worker yields the same number of equal-size batches (DDP needs both). Evaluation
    reads each shard once, split by node then by worker, and keeps the last partial batch.
    """
    if is_train:
        stages = [wds.ResampledShards(urls), wds.tarfile_to_samples(handler=wds.warn_and_continue),
                  wds.shuffle(shuffle_buffer)]
    else:
        stages = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
                  wds.tarfile_to_samples(handler=wds.warn_and_continue)]
    stages += [wds.map(decoder), drop_none, wds.batched(batch_size, collation_fn=collate, partial=not is_train)]
    pipeline = wds.DataPipeline(*stages)
    if is_train:
        pipeline = pipeline.with_epoch(batches_per_worker)
    return pipeline
