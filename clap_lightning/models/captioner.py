"""Audio captioning: a frozen CLAP audio side, a mapper, and a GPT2 decoder fed the mapper's prefix.

The model of the paper's captioning (and Microsoft's clapcap): the normalised CLAP audio
embedding is mapped to `prefix_length` GPT2 input embeddings; GPT2 continues them with
the caption. Only the mapper is trained by default. Greedy and beam decoding live in
`models/decoding.py`; `caption_audio` is the inference entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from clap_lightning.encoders.tokenizer import CaptionTokenizer
from clap_lightning.models.decoding import DecodingConfig, generate
from clap_lightning.models.mapper import MapperConfig, build_mapper

IGNORE_INDEX = -100  # label of positions that carry no loss (prefix, padding)


@dataclass
class CaptionerConfig:
    """Mapper + GPT2 decoder; GPT2 architecture fields are ignored when `decoder_pretrained` is set."""

    mapper: MapperConfig = field(default_factory=MapperConfig)  # the mapper (d_audio = the CLAP's d_proj)
    tokenizer: str = "gpt2"  # tokenizer dir, `builtin:<name>`, or hub id
    decoder_pretrained: Optional[str] = None  # local dir of GPT2LMHeadModel weights; None = random init
    n_layer: int = 12  # GPT2 blocks (random init only)
    n_head: int = 12  # GPT2 heads (random init only)
    n_positions: int = 1024  # GPT2 positions (random init only); must cover prefix + caption
    dropout: float = 0.1  # GPT2 dropout (random init only)
    max_caption_tokens: int = 40  # training tokens per caption, the appended <|endoftext|> included
    normalize_audio: bool = True  # L2-normalise the CLAP embedding before the mapper (clapcap: True)
    train_decoder: bool = False  # fine-tune GPT2 too (paper and clapcap: frozen)


def build_decoder(config: CaptionerConfig, tokenizer: CaptionTokenizer) -> nn.Module:
    """A `GPT2LMHeadModel`, loaded from a local path or built with random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if config.decoder_pretrained:
        return GPT2LMHeadModel.from_pretrained(config.decoder_pretrained)
    eos = tokenizer.tokenizer.eos_token_id
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=config.n_positions, n_embd=config.mapper.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout, bos_token_id=eos, eos_token_id=eos))


def build_caption_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_length: int) -> torch.Tensor:
    """Labels aligned with `[prefix ; caption]` inputs: IGNORE_INDEX on the prefix and on padding.

    Returns:
        [B, prefix_length + L] long; position i is the token GPT2 must emit *at* position i
        (the shift to next-token prediction happens in `caption_loss`).
    """
    caption = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    prefix = caption.new_full((caption.shape[0], prefix_length), IGNORE_INDEX)
    return torch.cat((prefix, caption), dim=1)


def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged over the labelled (caption) tokens of the batch.

    Args:
        logits: [B, N, V] decoder outputs on `[prefix ; caption]`.
        labels: [B, N] from `build_caption_labels`.
    """
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(shifted_logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)


class Captioner(nn.Module):
    """CLAP audio embedding -> mapper -> GPT2 prefix -> caption.

    Args:
        config: mapper and decoder settings.
        clap: optional CLAP model, kept frozen in eval mode, for captioning waveforms;
            without it the captioner takes precomputed audio embeddings only.
    """

    def __init__(self, config: CaptionerConfig, clap: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = CaptionTokenizer(config.tokenizer, max_length=config.max_caption_tokens, append_eos=True)
        self.mapper = build_mapper(config.mapper)
        self.decoder = build_decoder(config, self.tokenizer)
        n_embd = self.decoder.config.n_embd
        if n_embd != config.mapper.n_embd:
            raise ValueError(f"mapper.n_embd must equal the decoder's hidden size {n_embd}; got {config.mapper.n_embd}")
        self.decoder.requires_grad_(config.train_decoder)
        self.clap = clap.requires_grad_(False).eval() if clap is not None else None

    @property
    def eos_id(self) -> int:
        return self.tokenizer.tokenizer.eos_token_id

    def train(self, mode: bool = True) -> "Captioner":
        super().train(mode)
        if not self.config.train_decoder:
            self.decoder.eval()  # a frozen decoder keeps dropout off, as clapcap's frozen GPT2
        if self.clap is not None:
            self.clap.eval()
        return self

    @torch.no_grad()
    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, T] at the CLAP's sample rate -> audio embeddings [B, d_audio]."""
        if self.clap is None:
            raise ValueError("this Captioner has no CLAP model; pass precomputed audio embeddings instead")
        return self.clap.encode_audio(audio)

    def build_prefix(self, audio_emb: torch.Tensor) -> torch.Tensor:
        """Audio embeddings [B, d_audio] -> GPT2 prefix embeddings [B, prefix_length, n_embd]."""
        if audio_emb.ndim != 2 or audio_emb.shape[1] != self.config.mapper.d_audio:
            raise ValueError(f"expected audio embeddings [B, {self.config.mapper.d_audio}]; "
                             f"got {tuple(audio_emb.shape)}")
        if self.config.normalize_audio:
            audio_emb = F.normalize(audio_emb.float(), dim=-1)
        return self.mapper(audio_emb)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(input_ids)

    def forward(self, audio_emb: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, prefix_length + L, V] on `[prefix ; caption tokens]`."""
        prefix = self.build_prefix(audio_emb)
        inputs = torch.cat((prefix, self.embed_tokens(input_ids).to(prefix.dtype)), dim=1)
        mask = torch.cat((attention_mask.new_ones(prefix.shape[:2]), attention_mask), dim=1)
        return self.decoder(inputs_embeds=inputs, attention_mask=mask).logits

    def compute_loss(self, audio_emb: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the caption tokens only (never on the prefix or padding)."""
        logits = self(audio_emb, input_ids, attention_mask)
        return caption_loss(logits, build_caption_labels(input_ids, attention_mask, self.config.mapper.prefix_length))

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(captions)

    def decode_tokens(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """Token ids (eos already cut) -> stripped caption strings."""
        return [self.tokenizer.tokenizer.decode(list(ids), skip_special_tokens=True).strip() for ids in token_ids]


@torch.no_grad()
def caption_audio(captioner: Captioner, audio: Optional[torch.Tensor] = None,
                  audio_emb: Optional[torch.Tensor] = None, decoding: Optional[DecodingConfig] = None,
                  batch_size: int = 32) -> list[str]:
    """Caption clips, from waveforms (through the captioner's CLAP) or from precomputed embeddings.

    Args:
        captioner: the model; it is put in eval mode.
        audio: waveforms [N, T] at the CLAP's sample rate, already cropped/padded to its clip length.
        audio_emb: CLAP audio embeddings [N, d_audio] (give exactly one of `audio`, `audio_emb`).
        decoding: beam size, maximum length, length penalty, temperature (default: beam 5).
        batch_size: clips decoded together.

    Returns:
        One caption per clip, in order.
    """
    if (audio is None) == (audio_emb is None):
        raise ValueError("caption_audio needs exactly one of `audio` (waveforms) or `audio_emb` (embeddings)")
    decoding = decoding or DecodingConfig()
    captioner.eval()
    device = next(captioner.decoder.parameters()).device
    inputs = audio if audio is not None else audio_emb
    captions: list[str] = []
    for start in range(0, inputs.shape[0], batch_size):
        chunk = inputs[start:start + batch_size].to(device)
        emb = captioner.embed_audio(chunk) if audio is not None else chunk
        prefix = captioner.build_prefix(emb)
        token_ids = generate(captioner.decoder, captioner.embed_tokens, prefix, captioner.eos_id, decoding)
        captions.extend(captioner.decode_tokens(token_ids))
    return captions
