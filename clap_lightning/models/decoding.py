"""Batched greedy and beam-search decoding of a GPT2 decoder from prefix embeddings.

Every row of a batch has a prefix of the same length, so no attention mask is needed and
the key/value cache advances one token per step for all rows (finished rows keep emitting
end-of-text, which is cut off afterwards). Beam search follows msclap's `_generate_beam`
(scores are summed log-probabilities; beams are ranked by score / length**length_penalty,
where the length counts the end-of-text token), batched over clips.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class DecodingConfig:
    """How captions are generated."""

    beam_size: int = 5  # beams per clip; 1 = greedy
    max_length: int = 67  # generated tokens at most, end-of-text included (msclap: 67)
    length_penalty: float = 1.0  # rank beams by sum log p / length**this (msclap: 1.0; 0 = raw sum)
    temperature: float = 1.0  # divide logits by this before the softmax

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_length < 1:
            raise ValueError(f"beam_size and max_length must be >= 1; got {self.beam_size}, {self.max_length}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")


def _step(decoder: nn.Module, inputs_embeds: torch.Tensor, cache):
    """Feed embeddings [N, S, H]; return the last position's float logits [N, V] and the cache."""
    # transformers 5.x renamed `past_key_values` to `cache` (argument and output); accept both.
    key = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    out = decoder(inputs_embeds=inputs_embeds, use_cache=True, **{key: cache})
    return out.logits[:, -1].float(), getattr(out, key)


def cut_at_eos(tokens: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Rows of token ids [N, S] -> lists ending before the first end-of-text."""
    rows = []
    for row in tokens.tolist():
        rows.append(row[: row.index(eos_id)] if eos_id in row else row)
    return rows


def _check_lengths(decoder: nn.Module, prefix: torch.Tensor, max_length: int) -> None:
    limit = getattr(decoder.config, "n_positions", None)
    if limit is not None and prefix.shape[1] + max_length > limit:
        raise ValueError(f"prefix {prefix.shape[1]} + max_length {max_length} exceeds the decoder's "
                         f"{limit} positions")


@torch.no_grad()
def greedy_decode(decoder: nn.Module, embed: Callable[[torch.Tensor], torch.Tensor], prefix: torch.Tensor,
                  eos_id: int, max_length: int) -> list[list[int]]:
    """Pick the most likely token at each step (temperature does not change the argmax).

    Args:
        decoder: a causal LM taking `inputs_embeds` (GPT2LMHeadModel).
        embed: token ids [N] -> input embeddings [N, H].
        prefix: [B, P, H] prefix embeddings.
    """
    _check_lengths(decoder, prefix, max_length)
    logits, cache = _step(decoder, prefix, None)
    finished = torch.zeros(prefix.shape[0], dtype=torch.bool, device=prefix.device)
    steps = []
    for t in range(max_length):
        token = logits.argmax(-1).masked_fill(finished, eos_id)  # [B]
        steps.append(token)
        finished |= token == eos_id
        if finished.all() or t == max_length - 1:
            break
        logits, cache = _step(decoder, embed(token)[:, None].to(prefix.dtype), cache)
    return cut_at_eos(torch.stack(steps, dim=1), eos_id)


@torch.no_grad()
def beam_search(decoder: nn.Module, embed: Callable[[torch.Tensor], torch.Tensor], prefix: torch.Tensor,
                eos_id: int, config: DecodingConfig) -> list[list[int]]:
    """Batched beam search: `config.beam_size` beams for each of the B prefixes [B, P, H]."""
    _check_lengths(decoder, prefix, config.max_length)
    b, k = prefix.shape[0], config.beam_size
    logits, cache = _step(decoder, prefix, None)
    vocab = logits.shape[-1]
    if k > vocab:
        raise ValueError(f"beam_size {k} exceeds the vocabulary size {vocab}")
    scores, first = torch.log_softmax(logits / config.temperature, -1).topk(k, -1)  # [B, K]
    scores, tokens = scores.reshape(-1), first.reshape(-1, 1)  # [B*K], [B*K, 1]
    lengths = torch.ones_like(scores)
    finished = tokens[:, 0] == eos_id
    cache.batch_repeat_interleave(k)
    row_base = torch.arange(b, device=prefix.device)[:, None] * k  # [B, 1]
    for _ in range(1, config.max_length):
        if finished.all():
            break
        logits, cache = _step(decoder, embed(tokens[:, -1])[:, None].to(prefix.dtype), cache)
        logp = torch.log_softmax(logits / config.temperature, -1)  # [B*K, V]
        # A finished beam may only continue with end-of-text, at no cost and no extra length.
        logp[finished] = float("-inf")
        logp[finished, eos_id] = 0.0
        new_lengths = lengths + (~finished).float()
        total = scores[:, None] + logp  # [B*K, V]
        ranked = total / new_lengths[:, None] ** config.length_penalty
        _, index = ranked.view(b, k * vocab).topk(k, -1)  # [B, K]
        source = (row_base + index // vocab).reshape(-1)  # beam each survivor extends, [B*K]
        next_token = (index % vocab).reshape(-1)
        scores = total.view(b, k * vocab).gather(1, index).reshape(-1)
        lengths = new_lengths[source]
        tokens = torch.cat((tokens[source], next_token[:, None]), dim=1)
        finished = finished[source] | (next_token == eos_id)
        cache.reorder_cache(source)
    best = (scores / lengths ** config.length_penalty).view(b, k).argmax(-1)  # [B]
    return cut_at_eos(tokens[row_base[:, 0] + best], eos_id)


def generate(decoder: nn.Module, embed: Callable[[torch.Tensor], torch.Tensor], prefix: torch.Tensor,
             eos_id: int, config: DecodingConfig) -> list[list[int]]:
    """Greedy when `beam_size` is 1, else beam search; returns token ids without end-of-text."""
    if config.beam_size == 1:
        return greedy_decode(decoder, embed, prefix, eos_id, config.max_length)
    return beam_search(decoder, embed, prefix, eos_id, config)
