"""Projection head into the joint space, as msclap's `Projection` (CLAP 2022/2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Module):
    """linear1 (no bias) -> GELU -> linear2 (no bias) -> dropout -> residual add -> LayerNorm.

    Names and order follow msclap/models/clap.py so released weights load by renaming only.
    """

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.drop = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed1 = self.linear1(x)
        embed2 = self.drop(self.linear2(F.gelu(embed1)))
        return self.layer_norm(embed1 + embed2)
