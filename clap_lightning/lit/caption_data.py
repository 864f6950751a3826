"""Captioning data: a cache of frozen-CLAP audio embeddings + captions, and the DataModule that reads it.

The CLAP audio encoder is frozen during captioning training, so each clip is embedded once
and the mapper trains on the cached embeddings: one `.pt` file per split, written
atomically, holding

    {"format": "clap-lightning/caption-cache/1", "audio_emb": float32 [N, D],
     "captions": [[str, ...]] * N, "keys": [str] * N, "clap_checkpoint": str}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clap_lightning.checkpoint import safe_load
from clap_lightning.lit.captioning_config import CaptionDataConfig
from clap_lightning.errors import DataError

CACHE_FORMAT = "clap-lightning/caption-cache/1"


def _batched(clips: Iterable[dict[str, Any]], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def write_embedding_cache(clap: torch.nn.Module, clips: Iterable[dict[str, Any]], path: str | Path,
                          clap_checkpoint: str = "", batch_size: int = 32, device: Optional[str] = None) -> int:
    """Embed clips with a frozen CLAP and write embeddings + captions to `path` atomically.

    Args:
        clap: a model with `encode_audio(wave [B, T], lengths [B]) -> [B, D]` (e.g. `CLAP`).
        clips: dicts with "audio" (float tensor [T] at the CLAP's rate, cropped/padded to its
            clip length; e.g. `ClipDecoder`'s output), "texts" (list of captions), "key", and
            optionally "length" (samples that are not padding; default all).
        path: output `.pt` file; written to a temporary name, then renamed.
        clap_checkpoint: recorded so inference can find the matching CLAP.

    Returns:
        The number of clips written.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    was_training = clap.training
    clap.eval().to(device)
    embeddings, captions, keys = [], [], []
    for batch in _batched(clips, batch_size):
        audio = torch.stack([torch.as_tensor(c["audio"], dtype=torch.float32) for c in batch]).to(device)
        lengths = torch.tensor([c.get("length", len(c["audio"])) for c in batch], device=device)  # padding masked
        embeddings.append(clap.encode_audio(audio, lengths).float().cpu())
        captions.extend([list(c["texts"]) for c in batch])
        keys.extend([str(c["key"]) for c in batch])
    clap.train(was_training)
    if not keys:
        raise DataError(f"no clips to cache for {path}")
    return save_embedding_cache(path, torch.cat(embeddings), captions, keys, clap_checkpoint)


def save_embedding_cache(path: str | Path, audio_emb: torch.Tensor, captions: list[list[str]], keys: list[str],
                         clap_checkpoint: str = "") -> int:
    """Write embeddings [N, D] + each clip's captions and key to `path` atomically; returns N."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": CACHE_FORMAT, "audio_emb": audio_emb.float().cpu(), "captions": captions, "keys": keys,
                "clap_checkpoint": clap_checkpoint}, tmp)
    tmp.replace(path)
    return len(keys)


def cache_from_shards(clap_checkpoint: str | Path, urls: list[str], path: str | Path, batch_size: int = 32,
                      text_field: str = "text") -> int:
    """Embed captioned shards as `eval` does (its reader, `embed_clips`) and cache them at `path` for training.

    Args:
        clap_checkpoint: the CLAP pretraining checkpoint; recorded in the cache (and so in the
            captioner's config) so `eval --captioner` and `caption` find the matching CLAP.
        urls: shard paths (any number of corpora's splits); each clip's captions are its `text_field`.

    Returns:
        The number of clips written (L2-normalised embeddings, the ones `eval` captions from).
    """
    from clap_lightning.eval.embed import ClipSettings, build_eval_loader, embed_batches
    from clap_lightning.eval.retrieval import clip_captions
    from clap_lightning.lit.run import load_pretraining

    module = load_pretraining(str(clap_checkpoint))
    config = module.config
    clip = ClipSettings(config.model.sample_rate, config.model.clip_samples, config.data.pad_mode)
    model = module.model.to("cuda" if torch.cuda.is_available() else "cpu")
    embedded = embed_batches(model, build_eval_loader(urls, clip, batch_size, 0, name=str(path)))
    captions = clip_captions(embedded.metas, text_field)
    return save_embedding_cache(path, embedded.audio_emb, captions, list(embedded.keys), str(clap_checkpoint))


def read_embedding_cache(path: str | Path) -> dict[str, Any]:
    """Load a cache written by `write_embedding_cache`, with one-line errors."""
    cache = safe_load(path, error=DataError, what="embedding cache")
    if not isinstance(cache, dict) or cache.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a caption embedding cache (expected format '{CACHE_FORMAT}')")
    return cache


class CaptionPairs(Dataset):
    """Every (clip embedding, caption) pair of a cache: clips with 5 captions give 5 samples."""

    def __init__(self, cache: dict[str, Any]) -> None:
        self.audio_emb = cache["audio_emb"]
        self.pairs = [(i, text) for i, texts in enumerate(cache["captions"]) for text in texts]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        clip, text = self.pairs[index]
        return self.audio_emb[clip], text


class CollateCaptions:
    """Stack embeddings and tokenize captions; picklable for loader workers."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[tuple[torch.Tensor, str]]) -> dict[str, Any]:
        tokens = self.tokenizer([text for _, text in samples])
        return {"audio_emb": torch.stack([emb for emb, _ in samples]),  # [B, D]
                "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],  # [B, L]
                "captions": [text for _, text in samples]}


class CaptionDataModule(L.LightningDataModule):
    """Batches of cached embeddings + tokenized captions; reads nothing before `setup()`.

    Under DDP, Lightning wraps these map-style loaders in a DistributedSampler, so each rank
    sees its own share; the batch size is per device.
    """

    def __init__(self, config: CaptionDataConfig, tokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.train_set: Optional[CaptionPairs] = None
        self.val_set: Optional[CaptionPairs] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            if not self.config.train:
                raise DataError("caption data.train is empty; give the train embedding cache")
            self.train_set = CaptionPairs(read_embedding_cache(self.config.train))
        if self.config.val and self.val_set is None:
            self.val_set = CaptionPairs(read_embedding_cache(self.config.val))

    def _loader(self, dataset: CaptionPairs, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.config.batch_size, shuffle=shuffle, drop_last=shuffle,
                          num_workers=self.config.num_workers, collate_fn=CollateCaptions(self.tokenizer),
                          persistent_workers=self.config.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []


def most_common_caption(captions: Iterable[Iterable[str]]) -> str:
    """The single most frequent training caption (ties: the first seen), a constant baseline."""
    counts: dict[str, int] = {}
    for texts in captions:
        for text in texts:
            counts[text] = counts.get(text, 0) + 1
    values = np.array(list(counts.values()))
    return list(counts)[int(values.argmax())]
