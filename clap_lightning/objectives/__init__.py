"""Contrastive objectives and the cross-rank collectives they need (pure torch, no Lightning)."""

from clap_lightning.objectives.collectives import gather_with_grad, rank, world_size
from clap_lightning.objectives.contrastive import (
    MAX_LOG_LOGIT_SCALE,
    ContrastiveObjective,
    ContrastiveOutput,
    compute_logit_scale,
    compute_logits,
    symmetric_infonce,
)

__all__ = [
    "MAX_LOG_LOGIT_SCALE",
    "ContrastiveObjective",
    "ContrastiveOutput",
    "compute_logit_scale",
    "compute_logits",
    "gather_with_grad",
    "rank",
    "symmetric_infonce",
    "world_size",
]
