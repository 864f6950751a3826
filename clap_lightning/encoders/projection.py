"""Projection heads into the joint space: msclap's (CLAP 2022/2023) and LAION-CLAP's two-layer MLP.

`build_projection(name, ...)` picks one by the model config's `projection` name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.errors import ConfigError


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


class MLPProjection(nn.Module):
    """linear1 (bias) -> ReLU -> linear2 (bias), as LAION-CLAP's `audio_projection`/`text_projection`.

    LAION's modules are `nn.Sequential(Linear, ReLU, Linear)` (keys `0.*`, `2.*`); Hugging Face's
    `ClapProjectionLayer` names them `linear1`/`linear2`, as here. No dropout (LAION has none).
    """

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out)
        self.linear2 = nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(x)))


PROJECTIONS = {"msclap": Projection, "mlp": MLPProjection}


def build_projection(name: str, d_in: int, d_out: int, dropout: float) -> nn.Module:
    """The projection head called `name` (`ModelConfig.projection`)."""
    if name not in PROJECTIONS:
        raise ConfigError(f"unknown projection {name!r}; known: {', '.join(sorted(PROJECTIONS))}")
    return PROJECTIONS[name](d_in, d_out, dropout)
