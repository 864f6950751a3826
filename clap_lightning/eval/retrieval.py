"""Text<->audio retrieval on a captioned split: every caption of every clip is a text query/candidate."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from clap_lightning.errors import DataError
from clap_lightning.eval.metrics import retrieval_metrics
from clap_lightning.data.schema import read_labels
from clap_lightning.eval.zeroshot import embed_texts


def clip_captions(metas: Sequence[dict[str, Any]], text_field: str = "text") -> list[list[str]]:
    """Each clip's non-empty captions (5 for AudioCaps / Clotho); a clip without one is a DataError naming it."""
    per_clip = []
    for row, meta in enumerate(metas):
        texts = [t for t in read_labels(meta, text_field) if t.strip()]
        if not texts:
            raise DataError(f"clip {meta.get('id', row)} has no caption in its '{text_field}' field")
        per_clip.append(texts)
    return per_clip


def caption_table(metas: Sequence[dict[str, Any]], text_field: str = "text") -> tuple[list[str], torch.Tensor]:
    """Flatten every clip's captions into a list and the clip each describes.

    Returns:
        captions, and `[n_text]` long: row of the clip that caption `i` describes.
    """
    per_clip = clip_captions(metas, text_field)
    captions = [text for texts in per_clip for text in texts]
    owner = [row for row, texts in enumerate(per_clip) for _ in texts]
    return captions, torch.tensor(owner, dtype=torch.long)


def score_retrieval(model, tokenizer, audio_emb: torch.Tensor, metas: Sequence[dict[str, Any]],
                    text_field: str = "text") -> dict[str, float]:
    """R@1/5/10 and mAP@10 both ways (`a2t_r@1`, ..., `t2a_mAP@10`) by cosine similarity.

    Args:
        audio_emb: `[n_audio, D]` L2-normalised audio embeddings, in the order of `metas`.
        metas: each clip's json; `text_field` holds its captions.
    """
    captions, text_to_audio = caption_table(metas, text_field)
    text_emb = embed_texts(model, tokenizer, captions)  # [n_text, D]
    return retrieval_metrics(audio_emb @ text_emb.T, text_to_audio)
