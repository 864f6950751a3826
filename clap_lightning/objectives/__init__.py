"""Contrastive objectives and the cross-rank collectives they need (pure torch, no Lightning)."""

from clap_lightning.objectives.collectives import gather_ids, gather_with_grad, rank, world_size
from clap_lightning.objectives.contrastive import (
    FALSE_NEGATIVE_MODES,
    MAX_LOG_LOGIT_SCALE,
    ContrastiveObjective,
    ContrastiveOutput,
    compute_logit_scale,
    compute_logits,
    compute_scaled_similarity,
    find_positives,
    normalize_embeddings,
    symmetric_infonce,
)

__all__ = [
    "FALSE_NEGATIVE_MODES",
    "MAX_LOG_LOGIT_SCALE",
    "ContrastiveObjective",
    "ContrastiveOutput",
    "compute_logit_scale",
    "compute_logits",
    "compute_scaled_similarity",
    "find_positives",
    "gather_ids",
    "gather_with_grad",
    "normalize_embeddings",
    "rank",
    "symmetric_infonce",
    "world_size",
]
