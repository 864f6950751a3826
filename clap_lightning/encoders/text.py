"""Text encoders. GPT2 as in CLAP 2023: append `<|endoftext|>` and pool that token's hidden state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clap_lightning.encoders.registry import register_text_encoder
from clap_lightning.encoders.tokenizer import CaptionTokenizer


@dataclass
class GPT2TextConfig:
    """GPT2 text encoder; architecture fields are ignored when `pretrained` is set."""

    tokenizer: str = "gpt2"  # tokenizer dir, `builtin:<name>`, or hub id
    pretrained: Optional[str] = None  # local dir (or hub id) of GPT2 weights; None = random init
    max_length: int = 77  # tokens per caption, the appended <|endoftext|> included
    space_before_eos: bool = False  # tokenize "caption <|endoftext|>" as msclap 2023: a lone space token precedes eos
    vocab_size: Optional[int] = None  # random init without reading the tokenizer (None = the tokenizer's size)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # hidden size = output size
    n_positions: int = 1024  # position embeddings
    dropout: float = 0.1  # residual, embedding and attention dropout
    use_checkpointing: bool = False  # activation checkpointing per block


def gather_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Pick each row's last real token (right padding), found from the mask, never from token ids.

    msclap counts non-zero ids instead, which is wrong whenever a caption contains "!" (GPT2 id 0).
    """
    last = attention_mask.long().sum(dim=1) - 1  # [B]
    # The check reads a value on the host: skipped while compiling or exporting a graph.
    if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()) and (last < 0).any():
        raise ValueError("a caption has no tokens (all-zero attention mask)")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@register_text_encoder("gpt2", GPT2TextConfig)
class GPT2TextEncoder(nn.Module):
    """GPT2 whose sentence embedding is the hidden state of the appended end-of-text token."""

    def __init__(self, config: GPT2TextConfig) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.config = config
        if config.pretrained:
            self.base = GPT2Model.from_pretrained(config.pretrained)
        else:
            if config.vocab_size is None:
                tokenizer = build_text_tokenizer(config).tokenizer
                vocab_size, eos = len(tokenizer), tokenizer.eos_token_id
            else:  # GPT2's own convention: <|endoftext|> is the last id
                vocab_size, eos = config.vocab_size, config.vocab_size - 1
            self.base = GPT2Model(
                GPT2Config(
                    vocab_size=vocab_size,
                    bos_token_id=eos,
                    eos_token_id=eos,
                    n_positions=config.n_positions,
                    n_embd=config.n_embd,
                    n_layer=config.n_layer,
                    n_head=config.n_head,
                    resid_pdrop=config.dropout,
                    embd_pdrop=config.dropout,
                    attn_pdrop=config.dropout,
                )
            )
        if config.use_checkpointing:
            enable_activation_checkpointing(self.base)
        self.out_dim = self.base.config.n_embd

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # No key/value cache: an encoder never decodes (and the cache is refused under checkpointing).
        # [B, L, H]
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return gather_last_token(hidden, attention_mask)

    @staticmethod
    def build_tokenizer(config: GPT2TextConfig) -> CaptionTokenizer:
        return build_text_tokenizer(config)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformers layer's activations in backward (non-reentrant checkpoints).

    transformers 5.24 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`
    (the old name warns); older 5.x releases only have the old one.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_text_tokenizer(config: GPT2TextConfig) -> CaptionTokenizer:
    """The tokenizer matching a text encoder config."""
    return CaptionTokenizer(config.tokenizer, max_length=config.max_length, append_eos=True,
                            space_before_eos=config.space_before_eos)
