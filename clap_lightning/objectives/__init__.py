"""Contrastive objectives and the cross-rank collectives they need (pure torch, no Lightning)."""

from clap_lightning.objectives.collectives import gather_with_grad, rank, world_size
from clap_lightning.objectives.contrastive import (
    MAX_LOG_LOGIT_SCALE,
    ContrastiveObjective,
    ContrastiveOutput,
    compute_logit_scale,
    compute_logits,
    compute_scaled_similarity,
    normalize_embeddings,
    symmetric_infonce,
)

__all__ = [
    "MAX_LOG_LOGIT_SCALE",
    "ContrastiveObjective",
    "ContrastiveOutput",
    "compute_logit_scale",
    "compute_logits",
    "compute_scaled_similarity",
    "gather_with_grad",
    "normalize_embeddings",
    "rank",
    "symmetric_infonce",
    "world_size",
]
