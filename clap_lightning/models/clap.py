"""CLAP: an audio encoder and a text encoder projected into one space, with a learned temperature."""

from __future__ import annotations

import torch
from torch import nn

from clap_lightning.config import ModelConfig
from clap_lightning.encoders.projection import Projection
from clap_lightning.encoders.registry import build_audio_encoder, build_caption_tokenizer, build_text_encoder


def split_name(section: dict) -> tuple[str, dict]:
    """Split a registry section `{name: x, **options}` into its name and options."""
    options = dict(section)
    return options.pop("name"), options


class CLAP(nn.Module):
    """Contrastive language-audio model (Elizalde et al., 2023).

    `encode_*` return projected, unnormalised embeddings [B, d_proj]; the loss normalises.
    `logit_scale` is a shape-(1,) log-temperature (DeepSpeed cannot broadcast a 0-dim
    parameter) and `forward` returns it, because under ZeRO-3 a parameter read outside
    `forward` is a partitioned, empty shard.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = build_audio_encoder(*split_name(config.audio_encoder))
        self.text_encoder = build_text_encoder(*split_name(config.text_encoder))
        self.audio_projection = Projection(self.audio_encoder.out_dim, config.d_proj, config.proj_dropout)
        self.text_projection = Projection(self.text_encoder.out_dim, config.d_proj, config.proj_dropout)
        self.logit_scale = nn.Parameter(torch.full((1,), float(config.logit_scale_init)))

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Embed waveforms [B, T] at `config.sample_rate` into [B, d_proj]."""
        return self.audio_projection(self.audio_encoder(audio))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token ids and attention mask [B, L] into [B, d_proj]."""
        return self.text_projection(self.text_encoder(input_ids, attention_mask))

    def forward(
        self, audio: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (audio_emb [B, D], text_emb [B, D], logit_scale [1])."""
        return self.encode_audio(audio), self.encode_text(input_ids, attention_mask), self.logit_scale

    def build_tokenizer(self):
        """The caption tokenizer that matches this model's text encoder."""
        return build_caption_tokenizer(*split_name(self.config.text_encoder))
