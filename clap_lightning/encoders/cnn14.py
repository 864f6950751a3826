"""PANNs CNN14 audio encoder (Kong et al., 2020) as used by Microsoft CLAP 2022 (msclap).

Follows `Cnn14` in `msclap/models/audio.py` (msclap 1.3.4), whose 2022 config feeds 5 s of
44.1 kHz audio (window 1024, hop 320, 64 mel bins, 50-14000 Hz, mel filters at the input
rate) and projects its 2048-d `embedding`: ReLU(fc1(max + mean pooled features)), with
dropout 0.5 in training. Names follow msclap, so `audio_encoder.base.<key>` maps to `<key>`;
torchlibrosa's `spectrogram_extractor.*` / `logmel_extractor.*` matrices are recomputed by
`frontend` (see `MSCLAP_DERIVED_PREFIXES`). msclap's copy has no SpecAugment and keeps
PyTorch's default init (unlike PANNs); both hold here by default. `fc_audioset` does not feed
the embedding and is frozen unless `train_classifier_head`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.audio.frontend import SpecAugmentConfig, build_mel_stem, compute_valid_frames, normalise_and_augment
from clap_lightning.encoders.registry import register_audio_encoder

# msclap key prefixes with no counterpart here (torchlibrosa's fixed STFT/mel matrices).
MSCLAP_DERIVED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")

_CHANNELS = (64, 128, 256, 512, 1024, 2048)  # conv_block1..6 output channels
_MIN_SIZE = 2**5  # five 2x2 average pools need at least 32 frames and 32 mel bins


@dataclass
class CNN14Config:
    """CNN14 front end and head; defaults reproduce the msclap 2022 release."""

    sample_rate: int = 44100  # rate of the input waveform (Hz)
    mel_sample_rate: int = 44100  # rate the mel filters are computed for (msclap 2022: the input rate)
    n_fft: int = 1024  # STFT size and Hann window length (samples)
    hop_length: int = 320  # STFT hop (samples)
    n_mels: int = 64  # mel bins (at least 32)
    fmin: float = 50.0  # lowest mel band edge (Hz)
    fmax: float = 14000.0  # highest mel band edge (Hz); msclap's config_2022.yml says 14000
    out_dim: int = 2048  # embedding width (fc1 output; msclap `out_emb`)
    num_classes: int = 527  # classes of the AudioSet head `fc_audioset`
    block_dropout: float = 0.2  # dropout after each conv block
    head_dropout: float = 0.5  # dropout before fc1 and on the embedding
    train_classifier_head: bool = False  # give fc_audioset gradients (unused by the embedding)
    use_spec_augment: bool = False  # SpecAugment in training (PANNs has it, msclap's copy does not)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)  # widths relative to each input
    mask_padding: bool = False  # given clip lengths: padding out of bn0 statistics and pooling (msclap: off)

    def __post_init__(self) -> None:
        if self.n_mels < _MIN_SIZE:
            raise ValueError(f"CNN14Config.n_mels: expected at least {_MIN_SIZE}; got {self.n_mels}")


class ConvBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU layers, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


@register_audio_encoder("cnn14", CNN14Config)
class CNN14Encoder(nn.Module):
    """Waveform [B, T] at `cfg.sample_rate` -> CNN14 embedding [B, cfg.out_dim]."""

    def __init__(self, cfg: CNN14Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_dim = cfg.out_dim
        self.frontend, self.spec_augmenter, self.bn0 = build_mel_stem(cfg)
        for i, (c_in, c_out) in enumerate(zip((1,) + _CHANNELS[:-1], _CHANNELS), start=1):
            self.add_module(f"conv_block{i}", ConvBlock(c_in, c_out))
        self.fc1 = nn.Linear(_CHANNELS[-1], cfg.out_dim)
        self.fc_audioset = nn.Linear(cfg.out_dim, cfg.num_classes)
        if not cfg.train_classifier_head:
            self.fc_audioset.requires_grad_(False)

    def compute_pooled(self, wave: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ReLU(fc1(.)) of the time-max plus time-mean of the last conv map: [B, out_dim], pre-dropout.

        With `mask_padding` and `lengths` [B] (real samples per clip), padded frames are left out
        of bn0's statistics and the time pooling sees only the map's real columns.
        """
        feats = self.frontend(wave)  # [B, frames, n_mels]
        if feats.shape[1] < _MIN_SIZE:
            raise ValueError(f"CNN14 needs at least {_MIN_SIZE} frames; got {feats.shape[1]} ({wave.shape[1]} samples)")
        valid = None
        if self.cfg.mask_padding and lengths is not None:
            valid = compute_valid_frames(lengths.to(wave.device), feats.shape[1], self.cfg.hop_length, wave.shape[1])
        x = normalise_and_augment(feats, self.bn0, self.spec_augmenter, self.cfg.use_spec_augment, valid)
        x = x.unsqueeze(1)  # [B, 1, frames, n_mels]
        for i in range(1, len(_CHANNELS) + 1):
            x = getattr(self, f"conv_block{i}")(x, pool=2 if i < len(_CHANNELS) else 1)
            x = F.dropout(x, p=self.cfg.block_dropout, training=self.training)
        x = x.mean(dim=3)  # over mel: [B, C, time]
        if valid is None:
            x = x.amax(dim=2) + x.mean(dim=2)  # over time
        else:  # each column pools 2**5 frames (five 2x2 pools, floor): real when one of them is
            pooled = 2 ** (len(_CHANNELS) - 1)
            columns = valid[:, :x.shape[2] * pooled].reshape(x.shape[0], x.shape[2], pooled).any(dim=2)[:, None, :]
            weight = columns.to(x.dtype)
            x = x.masked_fill(~columns, float("-inf")).amax(dim=2) + (x * weight).sum(dim=2) / weight.sum(dim=2)
        x = F.dropout(x, p=self.cfg.head_dropout, training=self.training)
        return F.relu(self.fc1(x))

    def forward(self, wave: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return msclap's `embedding` [B, out_dim] (`lengths` is used only with `mask_padding`)."""
        return F.dropout(self.compute_pooled(wave, lengths), p=self.cfg.head_dropout, training=self.training)

    def forward_features(self, wave: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Return `embedding` [B, D] and sigmoid `clipwise_output` [B, num_classes], as msclap."""
        pooled = self.compute_pooled(wave, lengths)
        embedding = F.dropout(pooled, p=self.cfg.head_dropout, training=self.training)
        return {"embedding": embedding, "clipwise_output": torch.sigmoid(self.fc_audioset(pooled))}
