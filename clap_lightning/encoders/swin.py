"""Swin-transformer stages used by HTSAT, with window attention through SDPA or FlexAttention.

Module and parameter names follow msclap's `msclap/models/htsat.py` (itself from
microsoft/Swin-Transformer) so released state dicts load by a prefix rename. Differences:
attention runs in `F.scaled_dot_product_attention` with the relative position bias and the
shift mask folded into one additive mask, and no attention maps are returned or kept (msclap
keeps every block's map in eval mode for an optional heatmap, off in its config).

With `attention="flex"` the same function runs in FlexAttention (`torch.nn.attention.flex_attention`):
a `score_mod` adds the bias looked up from the table and the shift mask per score, so no
[windows, heads, N, N] bias is materialised or back-propagated; both modes hold the same
parameters and buffers, so state dicts load in either.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import flex_attention as flex
from torch.utils.checkpoint import checkpoint

ATTENTION_MODES = ("sdpa", "flex")


# Compiled FlexAttention specialises on each (stage, shift, grad mode, batch size) case: HTSAT 2023
# alone has 14 in a training step plus an eval pass, past dynamo's default of 8 recompiles per
# function, after which the remaining calls silently run the unfused reference. This is the
# limit while flex_attention is called (raised only, and only for that call).
FLEX_RECOMPILE_LIMIT = 64


@functools.cache
def compiled_flex_attention(backend: str | Callable = "inductor") -> Callable:
    """`flex_attention` under torch.compile with static shapes, built once per backend:
    uncompiled it runs an unfused reference that materialises the scores, which is what the
    flex mode exists to avoid."""
    return torch.compile(flex.flex_attention, backend=backend, dynamic=False)


def call_compiled_flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable,
                                 backend: str | Callable = "inductor") -> torch.Tensor:
    """Compiled FlexAttention with room for every case of a model (see FLEX_RECOMPILE_LIMIT)."""
    limit = max(FLEX_RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
    with torch._dynamo.config.patch(recompile_limit=limit):
        return compiled_flex_attention(backend)(q, k, v, score_mod=score_mod)


def run_flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable) -> torch.Tensor:
    """FlexAttention, compiled on accelerators; eager (unfused) on CPU, forward only there.

    torch 2.11 has no FlexAttention backward on CPU (it raises NotImplementedError), so CPU is
    for inference and tests, where compiling this call alone costs about 16 s of build per case
    on a 2-core VM; torch's advice to compile is silenced there. Under a compiled model (`model.compile`) dynamo
    takes the call into the model's graph; inductor's CPU kernel refuses q, k, v that share one
    buffer (our qkv projection's views), so on CPU they are copied apart first.
    """
    if torch.compiler.is_compiling():
        if q.device.type == "cpu":
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return flex.flex_attention(q, k, v, score_mod=score_mod)
    if q.device.type == "cpu":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex.flex_attention(q, k, v, score_mod=score_mod)
    return call_compiled_flex_attention(q, k, v, score_mod)


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Split [B, H, W, C] into windows [B * nW, window * window, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def merge_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Invert `partition_windows`: [B * nW, window * window, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability p (stochastic depth)."""
    if p == 0.0 or not training:
        return x
    keep = (torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) < 1.0 - p).to(x.dtype)
    return x * keep / (1.0 - p)


class DropPath(nn.Module):
    """Stochastic depth as a module (holds its rate)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)


class Mlp(nn.Module):
    """Two-layer GELU MLP (names fc1/fc2 as in msclap)."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def compute_relative_position_index(window: int) -> torch.Tensor:
    """Index [N, N] into the (2w-1)^2 bias table for each token pair of a w x w window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, attn_drop: float, proj_drop: float,
                 attention: str = "sdpa") -> None:
        super().__init__()
        check_attention_mode(attention, attn_drop)
        self.attention = attention
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Persistent, as in msclap, so its state dict maps key for key.
        self.register_buffer("relative_position_index", compute_relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def compute_bias(self) -> torch.Tensor:
        """Relative position bias [heads, N, N]."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: [B * nW, N, C] window tokens.
            shift_mask: [nW, N, N] additive mask (0 / -100) of shifted windows, or None.
        """
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.attention == "flex":
            out = run_flex_attention(q, k, v, self._score_mod(shift_mask, q.dtype))
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))
        if torch.is_grad_enabled() and self.relative_position_bias_table.requires_grad:
            return self.proj_drop(
                self.proj(self._attend_explicitly(q, k, v, shift_mask).transpose(1, 2).reshape(bw, n, c))
            )
        mask = self.compute_bias().to(q.dtype).unsqueeze(0)  # [1, heads, N, N]
        if shift_mask is not None:
            windows = shift_mask.shape[0]
            mask = mask + shift_mask.to(q.dtype).unsqueeze(1)  # [nW, heads, N, N]
            # A 4-D mask of full batch size keeps SDPA on its fused CPU/GPU kernels.
            mask = mask.expand(bw // windows, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))

    def _score_mod(self, shift_mask: torch.Tensor | None, dtype: torch.dtype) -> Callable:
        """FlexAttention score_mod: score + bias[index[q, k], head] (+ shift_mask[window, q, k]).

        The table is read per score, so its gradient is a scatter-add over index rather than
        the sum over a materialised [B * nW, heads, N, N] bias. Window `b` of the batch is
        window `b % nW` of its image, the order `partition_windows` produces.
        """
        table, index = self.relative_position_bias_table.to(dtype), self.relative_position_index
        if shift_mask is None:
            def add_bias(score, b, h, q_idx, kv_idx):
                return score + table[index[q_idx, kv_idx], h]
            return add_bias
        shift, windows = shift_mask.to(dtype), shift_mask.shape[0]

        def add_bias_and_shift_mask(score, b, h, q_idx, kv_idx):
            return score + table[index[q_idx, kv_idx], h] + shift[b % windows, q_idx, kv_idx]
        return add_bias_and_shift_mask

    def _attend_explicitly(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           shift_mask: torch.Tensor | None) -> torch.Tensor:
        """Softmax attention written out, for training: [B * nW, heads, N, d] -> same.

        When the bias table needs a gradient, SDPA's mask must be a full-batch tensor that
        requires grad, which sends it to its unfused path and materialises (and back-propagates
        through) a [B * nW, heads, N, N] mask; here the bias and shift mask broadcast over the
        batch instead and their gradients are plain sums.
        """
        bw, heads, n, d = q.shape
        attn = (q * d ** -0.5) @ k.transpose(-2, -1) + self.compute_bias().to(q.dtype)  # [B * nW, heads, N, N]
        if shift_mask is not None:
            windows = shift_mask.shape[0]
            attn = (attn.view(bw // windows, windows, heads, n, n) + shift_mask.to(q.dtype).unsqueeze(1)).view(
                bw, heads, n, n
            )
        attn = F.dropout(attn.softmax(dim=-1), self.attn_drop, self.training)
        return attn @ v


def check_attention_mode(attention: str, attn_drop: float) -> None:
    """One-line ValueError for an unknown mode, or dropout that FlexAttention cannot apply."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention: expected one of {ATTENTION_MODES}; got {attention!r}")
    if attention == "flex" and attn_drop > 0:
        raise ValueError(f"attention='flex' has no attention dropout; set attn_drop_rate to 0 (got {attn_drop})")


def compute_shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Mask [nW, N, N]: -100 between tokens that the cyclic shift brought from different regions."""
    regions = torch.zeros(1, h, w, 1)
    label = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, hs, ws, :] = label
            label += 1
    region_windows = partition_windows(regions, window).squeeze(-1)  # [nW, N]
    diff = region_windows.unsqueeze(1) - region_windows.unsqueeze(2)
    # -100 rather than -inf, exactly as Swin/msclap, so outputs match theirs.
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, each pre-normed with a residual and drop path."""

    def __init__(
        self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, shift: int,
        mlp_ratio: float, drop: float, attn_drop: float, drop_path_rate: float, attention: str = "sdpa",
    ) -> None:
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:  # the window covers the map: no partition, no shift
            window, shift = min(resolution), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, attn_drop, drop, attention)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = compute_shift_mask(*resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(partition_windows(y, self.window), self.attn_mask)
        y = merge_windows(y, self.window, h, w)
        if self.shift > 0:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the token grid and double the channels: concat 2x2 neighbours, norm, project."""

    def __init__(self, resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        # Order x0, x1, x2, x3 as in Swin: (even, even), (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks alternating plain and shifted windows, then merging."""

    def __init__(
        self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window: int,
        mlp_ratio: float, drop: float, attn_drop: float, drop_path_rates: list[float],
        use_downsample: bool, use_checkpointing: bool, attention: str = "sdpa",
    ) -> None:
        super().__init__()
        self.use_checkpointing = use_checkpointing
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2,
                mlp_ratio, drop, attn_drop, drop_path_rates[i], attention,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim) if use_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.use_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.downsample(x) if self.downsample is not None else x
