"""Embed the audio of an evaluation split once, keeping every clip's json, with an on-disk cache.

Tasks that read the same `<source>/<split>` (NSynth's four, both retrieval directions) share
one set of embeddings: the cache is keyed by source, split and checkpoint, not by task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from clap_lightning.data.pipeline import ClapLoader, ClapStream, ClipDecoder, WindowDecoder, stack_for_transfer
from clap_lightning.data.sources import resolve_shards
from clap_lightning.checkpoint import safe_load
from clap_lightning.errors import CheckpointError, ConfigError, DataError
from clap_lightning.models.clap import embed_clips, pool_windows

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bumped when the cache file layout changes; older files are recomputed


@dataclass
class ClipSettings:
    """How clips are cut before the audio encoder sees them (from the model's config)."""

    sample_rate: int  # model sample rate
    clip_samples: int  # samples per clip
    pad_mode: str = "repeat"  # short clips: "repeat" or "zero" (whose padding a `mask_padding` encoder masks)
    long_audio: str = "first"  # "first": the clip's start; "windows": every window of the recording, pooled
    hop_seconds: Optional[float] = None  # window hop for "windows" (None: half a clip)

    def __post_init__(self) -> None:
        if self.long_audio not in ("first", "windows"):
            raise ConfigError(f"long_audio must be 'first' or 'windows', got {self.long_audio!r}")
        if self.hop_seconds is not None and self.hop_seconds <= 0:
            raise ConfigError(f"the window hop must be positive, got {self.hop_seconds} s")

    @property
    def hop_samples(self) -> int:
        hop = self.hop_seconds if self.hop_seconds is not None else self.clip_samples / self.sample_rate / 2
        return max(1, round(hop * self.sample_rate))


@dataclass
class EmbeddedSplit:
    """Audio embeddings of one shard split, with each clip's key and json metadata."""

    audio_emb: torch.Tensor  # [N, D], L2-normalised, float32 on the CPU
    keys: list[str]
    metas: list[dict[str, Any]]  # the sample jsons, in row order
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples and shards left out, by reason


class EvalCollate:
    """Stack decoded clips and keep their keys and jsons (no tokenization: tasks build their own text)."""

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = {"key": [s["key"] for s in samples], "meta": [s["meta"] for s in samples]}
        if samples[0]["audio"].dim() == 2:  # `WindowDecoder`: each clip is [W, T] windows
            batch["audio"] = torch.cat([s["audio"] for s in samples])  # [sum W, T]
            batch["audio_length"] = torch.cat([s["length"] for s in samples])
            batch["windows"] = [len(s["audio"]) for s in samples]
            return batch
        batch["audio"] = stack_for_transfer([s["audio"] for s in samples])  # [B, T]
        batch["audio_length"] = torch.tensor([s["length"] for s in samples])  # [B] samples that are not padding
        return batch


def build_eval_loader(urls: list[str], clip: ClipSettings, batch_size: int, num_workers: int,
                      name: str = "the evaluation shards") -> ClapLoader:
    """Read every clip of `urls` once, deterministically cropped from the start.

    The project's one shard reader (`ClapStream`'s single pass), so damaged shards and bad
    samples are skipped and counted by the same reasons as in training; each batch carries its
    `skipped` increments. Every rank reads the whole split (rank 0 of 1 in `pass_share`'s
    rule), so the validation callback gives identical metrics on every rank and, under ZeRO-3,
    every rank runs the same number of forward passes.
    """
    if clip.long_audio == "windows":
        decoder = WindowDecoder(clip.sample_rate, clip.clip_samples, clip.pad_mode, clip.hop_samples)
    else:
        decoder = ClipDecoder(clip.sample_rate, clip.clip_samples, clip.pad_mode, is_train=False)
    workers = max(0, min(num_workers, len(urls)))
    stream = ClapStream([urls], decoder, EvalCollate(), batch_size, is_train=False, name=name)
    return ClapLoader(stream, batch_size=None, num_workers=workers)


def embed_batches(model, batches: Iterator[dict[str, Any]]) -> EmbeddedSplit:
    """Embed every evaluation batch with `embed_clips` (eval mode, each submodule's mode restored)."""
    embs, keys, metas, skipped = [], [], [], Counter()
    for batch in batches:
        if len(batch["audio"]):
            emb = embed_clips(model, batch["audio"], batch["audio_length"], len(batch["audio"])).cpu()
            if "windows" in batch:  # one row per clip: the normalised mean of its windows
                emb = torch.stack([pool_windows(w) for w in emb.split(batch["windows"])])
            embs.append(emb)
        keys += batch["key"]
        metas += batch["meta"]
        skipped.update(batch.get("skipped", {}))
    if not embs:
        raise DataError("the evaluation shards yielded no clips")
    return EmbeddedSplit(torch.cat(embs), keys, metas, dict(skipped))


def split_urls(split_dir: Path) -> list[str]:
    """Shard URLs of a split directory; DataError("no shards at <dir>") when there are none."""
    try:
        return resolve_shards(str(split_dir)).urls
    except DataError:
        raise DataError(f"no shards at {split_dir}") from None


def checkpoint_digest(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    """First 16 hex digits of the checkpoint file's sha256: a retrained or edited checkpoint misses the cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """Embeddings saved as `<dir>/<source>-<split>-<model digest>.pt`, written atomically.

    Args:
        directory: where cache files live (None disables the cache).
        model_digest: identifies the weights and clip settings, e.g. `checkpoint_digest(ckpt)`.
    """

    def __init__(self, directory: Optional[str | Path], model_digest: str) -> None:
        self.directory = Path(directory) if directory else None
        self.model_digest = model_digest

    def path(self, source: str, split: str) -> Optional[Path]:
        if self.directory is None:
            return None
        return self.directory / f"{source}-{split}-{self.model_digest}.pt"

    def load(self, source: str, split: str) -> Optional[EmbeddedSplit]:
        path = self.path(source, split)
        if path is None or not path.is_file():
            return None
        try:
            stored = safe_load(path, what="embedding cache")
        except CheckpointError as err:  # a truncated or foreign file: recompute rather than fail
            log.warning("ignoring unreadable embedding cache: %s", err)
            return None
        if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT:
            return None
        return EmbeddedSplit(stored["audio_emb"], stored["keys"], [json.loads(m) for m in stored["metas"]],
                             dict(stored.get("skipped", {})))

    def save(self, source: str, split: str, embedded: EmbeddedSplit) -> None:
        path = self.path(source, split)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # jsons as strings: weights_only loading accepts them whatever the corpus put in its metadata.
        stored = {"format": CACHE_FORMAT, "audio_emb": embedded.audio_emb, "keys": embedded.keys,
                  "metas": [json.dumps(m) for m in embedded.metas], "skipped": dict(embedded.skipped)}
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(stored, tmp)
        tmp.replace(path)  # readers see the old file or the whole new one, never half
