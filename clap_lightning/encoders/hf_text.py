"""BERT, RoBERTa and CLIP-text encoders through transformers: the paper's text-encoder ablation.

Pooling follows msclap's `TextEncoder` (msclap/models/clap.py), which CLAP 2022 (BERT) used:
BERT and RoBERTa take the last hidden state of the first token ([CLS] / <s>); CLIP takes
the end-of-text token's final hidden state and its `text_projection` (CLIP's pooled output).
Module names match msclap's (`base.*`, `clip_text_projection.*`), so its checkpoints load by
renaming the `caption_encoder.` prefix only. Each tokenizer keeps its own special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clap_lightning.encoders.registry import register_text_encoder
from clap_lightning.errors import ConfigError
from clap_lightning.encoders.text import enable_activation_checkpointing, gather_last_token
from clap_lightning.encoders.tokenizer import CaptionTokenizer


@dataclass
class BertTextConfig:
    """A BERT-style encoder; architecture fields are ignored when `pretrained` is set."""

    tokenizer: str = "bert-base-uncased"  # tokenizer dir, `builtin:<name>`, or hub id
    pretrained: Optional[str] = None  # local dir (or hub id) of weights; None = random init
    max_length: int = 100  # tokens per caption, special tokens included (msclap 2022 text_len)
    vocab_size: Optional[int] = None  # random init without reading the tokenizer (None = the tokenizer's size)
    hidden_size: int = 768  # hidden size = output size
    num_layers: int = 12  # transformer blocks
    num_heads: int = 12  # attention heads
    intermediate_size: int = 3072  # MLP width
    max_positions: int = 512  # position embeddings
    dropout: float = 0.1  # hidden and attention dropout
    use_checkpointing: bool = False  # activation checkpointing per block
    pooling: str = "cls"  # cls: first token's last hidden state (msclap); pooler: the model's dense+tanh pooler (LAION)


@dataclass
class RobertaTextConfig(BertTextConfig):
    """RoBERTa: positions start after the pad id, so `max_positions` is max_length + 2."""

    tokenizer: str = "roberta-base"  # tokenizer dir, `builtin:<name>`, or hub id
    max_length: int = 77  # tokens per caption, <s> and </s> included
    max_positions: int = 514  # position embeddings (RoBERTa offsets positions by pad id + 1)


@dataclass
class CLIPTextConfig(BertTextConfig):
    """CLIP's causal text transformer with its projection (output size `projection_dim`)."""

    tokenizer: str = "openai/clip-vit-base-patch32"  # tokenizer dir, `builtin:<name>`, or hub id
    max_length: int = 77  # tokens per caption, start and end tokens included
    hidden_size: int = 512  # transformer width
    num_heads: int = 8  # attention heads
    intermediate_size: int = 2048  # MLP width
    max_positions: int = 77  # position embeddings
    projection_dim: int = 512  # output size (CLIP's text_projection)
    dropout: float = 0.0  # attention dropout (CLIP has no hidden dropout)


def _vocab_pad_eos(config: BertTextConfig) -> tuple[int, int, int]:
    """Vocabulary size, pad id and end id for a random init: from the tokenizer unless `vocab_size` is set.

    Without a tokenizer the released models' conventions apply: RoBERTa pads with 1, BERT with 0,
    CLIP's end-of-text is the last id.
    """
    if config.vocab_size is not None:
        return config.vocab_size, 1 if isinstance(config, RobertaTextConfig) else 0, config.vocab_size - 1
    tokenizer = build_encoder_tokenizer(config).tokenizer
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return len(tokenizer), tokenizer.pad_token_id or 0, eos


def build_encoder_tokenizer(config: BertTextConfig) -> CaptionTokenizer:
    """The tokenizer of a BERT/RoBERTa/CLIP config, with the tokenizer's own special tokens."""
    return CaptionTokenizer(config.tokenizer, max_length=config.max_length, append_eos=False)


class _TransformersTextEncoder(nn.Module):
    """Shared plumbing: checkpointing and the tokenizer hook of the registry."""

    def _finish(self, config: BertTextConfig, model: nn.Module) -> None:
        if config.use_checkpointing:
            enable_activation_checkpointing(model)

    @staticmethod
    def build_tokenizer(config: BertTextConfig) -> CaptionTokenizer:
        return build_encoder_tokenizer(config)


class _ClsEncoder(_TransformersTextEncoder):
    """BERT/RoBERTa: the last hidden state of the first token, as msclap 2022."""

    model_name = ""

    def __init__(self, config: BertTextConfig) -> None:
        super().__init__()
        self.config = config
        if config.pooling not in ("cls", "pooler"):
            raise ConfigError(f"text_encoder.pooling must be 'cls' or 'pooler', got {config.pooling!r}")
        self.base = self._build_base(config)
        # msclap keeps the pooler (its checkpoints hold `pooler.*`) but never uses it; frozen so
        # DDP sees no parameter without a gradient. LAION-CLAP and ClapModel pool through it.
        if getattr(self.base, "pooler", None) is not None and config.pooling == "cls":
            self.base.pooler.requires_grad_(False)
        self._finish(config, self.base)
        self.out_dim = self.base.config.hidden_size

    def _build_base(self, config: BertTextConfig) -> nn.Module:
        import transformers

        model_cls = getattr(transformers, f"{self.model_name}Model")
        if config.pretrained:
            return model_cls.from_pretrained(config.pretrained)
        vocab_size, pad_id, _ = _vocab_pad_eos(config)
        hf_config = getattr(transformers, f"{self.model_name}Config")(
            vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_positions, hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout, pad_token_id=pad_id,
            type_vocab_size=1 if self.model_name == "Roberta" else 2,
        )
        return model_cls(hf_config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.pooling == "pooler":
            return out.pooler_output  # [B, H]: tanh(dense(<s>))
        return out.last_hidden_state[:, 0]  # [B, H]: [CLS] / <s>


@register_text_encoder("bert", BertTextConfig)
class BertTextEncoder(_ClsEncoder):
    """BERT; CLAP 2022's text encoder (bert-base-uncased, 100 tokens)."""

    model_name = "Bert"


@register_text_encoder("roberta", RobertaTextConfig)
class RobertaTextEncoder(_ClsEncoder):
    """RoBERTa, pooled at <s> as msclap does."""

    model_name = "Roberta"


@register_text_encoder("clip_text", CLIPTextConfig)
class CLIPTextEncoder(_TransformersTextEncoder):
    """CLIP's text tower: end-of-text token's final hidden state, then `clip_text_projection`."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        from transformers import CLIPTextConfig as HFCLIPTextConfig
        from transformers import CLIPTextModelWithProjection

        self.config = config
        if config.pretrained:
            model = CLIPTextModelWithProjection.from_pretrained(config.pretrained)
        else:
            vocab_size, pad_id, eos_id = _vocab_pad_eos(config)
            # HF computes its own pooled output from `eos_token_id` in every forward; we pool by mask.
            model = CLIPTextModelWithProjection(HFCLIPTextConfig(
                vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
                max_position_embeddings=config.max_positions, projection_dim=config.projection_dim,
                attention_dropout=config.dropout, pad_token_id=pad_id, bos_token_id=None, eos_token_id=eos_id,
            ))
        self.base = model.text_model
        self.clip_text_projection = model.text_projection
        self._finish(config, self.base)
        self.out_dim = self.clip_text_projection.out_features

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # CLIP's pooled output is the end-of-text token, the last real one; found from the mask
        # rather than from token ids (CLIP pads with that same token).
        return self.clip_text_projection(gather_last_token(hidden, attention_mask))
