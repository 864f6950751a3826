"""Mapper networks: a CLAP audio embedding [B, d_audio] -> a GPT2 input-embedding prefix [B, P, n_embd].

Both follow ClipCap (Mokady et al., 2021) as used by Microsoft's clapcap (msclap
`models/mapper.py`): the MLP mapper and the transformer mapper with learned prefix
constants (prefix length 40, 8 layers, 8 heads). Parameter names and shapes match
clapcap's `clap_project.*` keys, so `load_clapcap_mapper` loads a released checkpoint
by stripping that prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from clap_lightning.registry import Registry

MAPPERS: Registry[nn.Module] = Registry("mapper")
CLAPCAP_PREFIX = "clap_project."


@dataclass
class MapperConfig:
    """A mapper from the CLAP joint space to a GPT2 prefix (defaults: clapcap 2023)."""

    name: str = "transformer"  # "transformer" (clapcap) or "mlp" (ClipCap's MLP)
    d_audio: int = 1024  # size of the CLAP audio embedding (the CLAP's d_proj)
    n_embd: int = 768  # GPT2 hidden size
    prefix_length: int = 40  # prefix embeddings handed to GPT2
    clip_length: int = 40  # tokens the audio embedding is first projected to (transformer mapper)
    num_layers: int = 8  # transformer mapper blocks
    num_heads: int = 8  # attention heads per block
    mlp_ratio: float = 2.0  # block MLP hidden size / n_embd (clapcap's Transformer default)


class MLPMapper(nn.Module):
    """ClipCap's MLP: d_audio -> P*n_embd/2 -> tanh -> P*n_embd; keys `model.0.*`, `model.2.*`."""

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        self.config = config
        out = config.n_embd * config.prefix_length
        self.model = nn.Sequential(nn.Linear(config.d_audio, out // 2), nn.Tanh(), nn.Linear(out // 2, out))

    def forward(self, audio_emb: torch.Tensor) -> torch.Tensor:
        return self.model(audio_emb).view(audio_emb.shape[0], self.config.prefix_length, self.config.n_embd)


class PrefixAttention(nn.Module):
    """Multi-head self-attention laid out as clapcap's `MultiHeadAttention` (no q/kv bias)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"mapper n_embd {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q = self.to_queries(x).view(b, n, h, c // h).transpose(1, 2)  # [B, h, n, dh]
        # clapcap reshapes the kv projection as [b, n, 2, h, dh]: keys are the first half of the channels.
        kv = self.to_keys_values(x).view(b, n, 2, h, c // h)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # scale dh**-0.5, as clapcap
        return self.project(out.transpose(1, 2).reshape(b, n, c))


class PrefixBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)) with ReLU."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PrefixAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Module()  # a bare container keeps clapcap's `mlp.fc1` / `mlp.fc2` names
        self.mlp.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.mlp.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(F.relu(self.mlp.fc1(self.norm2(x))))


class TransformerMapper(nn.Module):
    """clapcap's transformer mapper.

    The audio embedding is projected to `clip_length` tokens, concatenated with
    `prefix_length` learned constants, run through the blocks; the outputs at the
    constants' positions are the prefix.
    """

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.d_audio, config.clip_length * config.n_embd)
        self.prefix_const = nn.Parameter(torch.randn(config.prefix_length, config.n_embd))
        self.transformer = nn.Module()  # keeps clapcap's `transformer.layers.N` names
        self.transformer.layers = nn.ModuleList(
            PrefixBlock(config.n_embd, config.num_heads, config.mlp_ratio) for _ in range(config.num_layers))

    def forward(self, audio_emb: torch.Tensor) -> torch.Tensor:
        b = audio_emb.shape[0]
        x = self.linear(audio_emb).view(b, self.config.clip_length, self.config.n_embd)
        x = torch.cat((x, self.prefix_const.unsqueeze(0).expand(b, -1, -1)), dim=1)
        for layer in self.transformer.layers:
            x = layer(x)
        return x[:, self.config.clip_length:]  # [B, prefix_length, n_embd]


MAPPERS.register("mlp", MapperConfig)(MLPMapper)
MAPPERS.register("transformer", MapperConfig)(TransformerMapper)


def build_mapper(config: MapperConfig) -> nn.Module:
    """Build the mapper named by `config.name` (raises ValueError naming the known ones)."""
    builder, _ = MAPPERS.get(config.name)
    return builder(config)


def strip_clapcap_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep clapcap's `clap_project.*` entries, renamed to this module's keys."""
    mapper_state = {k[len(CLAPCAP_PREFIX):]: v for k, v in state_dict.items() if k.startswith(CLAPCAP_PREFIX)}
    if not mapper_state:
        raise ValueError(f"expected keys starting with '{CLAPCAP_PREFIX}' (a clapcap checkpoint); found none")
    return mapper_state


def load_clapcap_mapper(mapper: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load the mapper part of a clapcap state dict (keys `clap_project.*`) strictly."""
    mapper.load_state_dict(strip_clapcap_prefix(state_dict), strict=True)
