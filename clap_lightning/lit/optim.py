"""AdamW with no decay on norms, biases and the temperature; linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from clap_lightning.config import OptimConfig


def split_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: 1-D parameters are norms, biases or the logit scale (CLIP)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at `step`: linear from 0 to 1, then cosine down to `min_lr_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: OptimConfig, total_steps: int):
    """AdamW and a per-step LambdaLR scheduler, in Lightning's `configure_optimizers` format.

    `fused` selects torch's fused AdamW kernel, the same update in fewer launches than the
    default foreach path; it is off by default so existing runs keep their exact numbers.
    """
    optimizer = torch.optim.AdamW(split_decay_groups(model, config.weight_decay), lr=config.lr,
                                  betas=tuple(config.betas), eps=config.eps, fused=config.fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, total_steps, config.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
