"""HTSAT audio encoder (Chen et al., ICASSP 2022) as released in Microsoft CLAP 2023 (msclap).

Follows `msclap/models/htsat.py` (class HTSAT_Swin_Transformer, msclap 1.3.4) with its config
(`msclap/models/config.py`): waveform -> log-mel -> bn0 over mel bins -> SpecAugment (training)
-> fold the spectrogram into a square image (`reshape_wav2img`) -> patch embedding -> Swin
stages -> LayerNorm -> token-semantic (TSCAM) head. msclap's HTSATWrapper feeds `latent_output`
(the mean of the final normed tokens, 768-d) to CLAP's projection; `forward` returns exactly that.

Names follow msclap, so `audio_encoder.base.htsat.<key>` maps to `<key>` here. Differences:
- torchlibrosa's `spectrogram_extractor.stft.conv_{real,imag}.weight` and
  `logmel_extractor.melW` are derived from the config and have no counterpart (see
  `MSCLAP_DERIVED_PREFIXES`); our `frontend` computes the same features with `torch.stft`.
- Window attention uses SDPA (or FlexAttention with `attention: flex`, same function and state
  dict) and keeps no attention maps (msclap's `htsat_attn_heatmap` is off).
- Inputs longer than `spec_size * freq_ratio` frames are refused: msclap random-crops them in
  training and averages hard-coded 689-frame crops in eval, which callers avoid by cropping
  the waveform to the clip length first (7 s -> 965 frames < 1024 in msclap 2023).
- msclap's fixed options are fixed here too: qkv bias on, patch norm on, no absolute position
  embedding, LayerNorm before the MLP, no repeat mode, mixup outside the encoder.
- `tscam_conv` and `head` do not feed the embedding; unless `train_classifier_head` they are
  frozen so DDP sees no unused trainable parameters (msclap never uses `head` at all).
- `mask_padding` (off as released): given each clip's real length, padded frames stay out of
  bn0's statistics and the token-semantic pooling and take bn0's neutral value, and a short
  spectrogram is padded to the image rather than stretched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.audio.frontend import SpecAugmentConfig, build_mel_stem, compute_valid_frames, normalise_and_augment
from clap_lightning.audio.io import fit_length
from clap_lightning.encoders.registry import register_audio_encoder
from clap_lightning.encoders.swin import ATTENTION_MODES, BasicLayer

# Key prefixes of a msclap HTSAT state dict with no counterpart here (torchlibrosa's fixed
# STFT/mel matrices, recomputed by `frontend`); a converter drops them.
MSCLAP_DERIVED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")


@dataclass
class HTSATConfig:
    """HTSAT shape and front end; defaults reproduce the msclap 2023 release."""

    sample_rate: int = 44100  # rate of the input waveform (Hz)
    mel_sample_rate: int = 32000  # rate the mel filters are computed for; 32000 as msclap 2023 (a quirk)
    n_fft: int = 1024  # STFT size and Hann window length (samples)
    hop_length: int = 320  # STFT hop (samples)
    n_mels: int = 64  # mel bins
    fmin: float = 50.0  # lowest mel band edge (Hz, at mel_sample_rate)
    fmax: float = 14000.0  # highest mel band edge (Hz, at mel_sample_rate)
    spec_size: int = 256  # side of the square spectrogram image the Swin sees
    patch_size: int = 4  # patch-embedding kernel size
    patch_stride: int = 4  # patch-embedding stride (time and frequency)
    in_chans: int = 1  # input image channels (mono)
    embed_dim: int = 96  # channels after patch embedding; doubles per stage
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])  # Swin blocks per stage
    num_heads: list[int] = field(default_factory=lambda: [4, 8, 16, 32])  # attention heads per stage
    window_size: int = 8  # attention window side (tokens)
    mlp_ratio: float = 4.0  # MLP hidden width / channels
    drop_rate: float = 0.0  # dropout after attention projection and in MLPs
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.1  # stochastic depth, linearly increasing to this over all blocks
    num_classes: int = 527  # classes of the token-semantic head (AudioSet)
    enable_tscam: bool = True  # token-semantic conv head (msclap: True); else a linear head
    train_classifier_head: bool = False  # give tscam_conv/head gradients (unused by the embedding)
    use_spec_augment: bool = True  # SpecAugment time/frequency stripes in training
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)  # widths relative to the image
    use_checkpointing: bool = False  # activation checkpointing per Swin block (saves memory)
    attention: str = "sdpa"  # window attention kernel: sdpa, or flex (FlexAttention, no materialised bias)
    mask_padding: bool = False  # given clip lengths: padding out of bn0 statistics and pooling (msclap: off)
    enable_fusion: bool = False  # LAION's feature fusion: a whole-clip view + 3 crops for clips longer than the window
    aff_block_r: int = 4  # channel reduction inside the attentional feature fusion block
    mel_scale: str = "slaney"  # mel filters: slaney (librosa, msclap, LAION unfused) or htk (LAION/HF fusion input)
    quantize_int16: bool = False  # round the waveform to 16 bits first, as LAION-CLAP's inference does

    def __post_init__(self) -> None:
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        check_htsat_shapes(self)
        if self.mel_scale not in ("slaney", "htk"):
            _fail("mel_scale", "'slaney' or 'htk'", self.mel_scale)
        if self.attention not in ATTENTION_MODES:
            _fail("attention", " or ".join(repr(m) for m in ATTENTION_MODES), self.attention)
        if self.attention == "flex" and self.attn_drop_rate > 0:
            _fail("attn_drop_rate", "0 with attention 'flex' (no attention dropout there)", self.attn_drop_rate)

    @property
    def out_dim(self) -> int:
        """Embedding width: channels of the last stage."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def freq_ratio(self) -> int:
        """How many time slices of the spectrogram are stacked along the image's mel axis."""
        return self.spec_size // self.n_mels

    @property
    def max_frames(self) -> int:
        """Most STFT frames the image holds; longer inputs are refused."""
        return self.spec_size * self.freq_ratio


def _fail(field_name: str, expected: str, value) -> None:
    raise ValueError(f"HTSATConfig.{field_name}: expected {expected}; got {value}")


def check_htsat_shapes(cfg: HTSATConfig) -> None:
    """Raise a one-line ValueError if the sizes cannot form HTSAT's image and stages."""
    stages = len(cfg.depths)
    if stages < 1 or len(cfg.num_heads) != stages:
        _fail("num_heads", f"one entry per stage ({stages})", cfg.num_heads)
    if not 1 <= cfg.n_mels <= cfg.spec_size or cfg.spec_size % cfg.freq_ratio:
        _fail("spec_size", f"a multiple of spec_size // n_mels with n_mels={cfg.n_mels}", cfg.spec_size)
    if cfg.patch_size < cfg.patch_stride or (cfg.patch_size - cfg.patch_stride) % 2:
        _fail("patch_size", f">= patch_stride={cfg.patch_stride}, differing by an even number", cfg.patch_size)
    grid = cfg.spec_size // cfg.patch_stride
    if cfg.spec_size % cfg.patch_stride or grid % 2 ** (stages - 1):
        _fail("spec_size", f"spec_size / patch_stride divisible by 2**(stages-1)={2 ** (stages - 1)}", cfg.spec_size)
    for i in range(stages):
        res, dim = grid // 2**i, cfg.embed_dim * 2**i
        if res > cfg.window_size and res % cfg.window_size:
            _fail("window_size", f"a divisor of the stage-{i} grid {res}", cfg.window_size)
        if dim % cfg.num_heads[i]:
            _fail("num_heads", f"stage {i} heads dividing its {dim} channels", cfg.num_heads)
    if cfg.enable_tscam and (grid // 2 ** (stages - 1)) % cfg.freq_ratio:
        _fail("spec_size", f"final grid divisible by freq_ratio={cfg.freq_ratio} for the TSCAM head", cfg.spec_size)


class AFFBlock(nn.Module):
    """LAION-CLAP's 2-D attentional feature fusion (Dai et al., 2021): a sigmoid gate, from local (1x1 convs)
    and global (pooled) context of `x + residual`, mixes the whole-clip patches with the crops' patches.

    Module layout (`local_att.0..4`, `global_att.1..5`) as LAION's `AFF` and transformers' `ClapAudioAFFBlock`.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        inter = channels // reduction
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        self.global_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        both = x + residual
        gate = torch.sigmoid(self.local_att(both) + self.global_att(both))
        return 2 * x * gate + 2 * residual * (1 - gate)


class PatchEmbed(nn.Module):
    """Conv patch embedding of the spectrogram image, then LayerNorm (msclap: patch_norm=True).

    With non-overlapping patches (size == stride, the released config) the conv is computed as
    a reshape into patches and one matrix product with the same weight: identical values, and
    its backward to the image (which needs gradients for `bn0`) is a GEMM rather than CPU
    conv's slow transposed convolution.
    """

    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        pad = (cfg.patch_size - cfg.patch_stride) // 2
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_stride, padding=pad)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.as_matmul = cfg.patch_size == cfg.patch_stride
        if cfg.enable_fusion:  # LAION: the 3 crops' patches (each a third as wide) are fused into the whole clip's
            self.fusion_model = AFFBlock(cfg.embed_dim, cfg.aff_block_r)
            self.mel_conv2d = nn.Conv2d(cfg.in_chans, cfg.embed_dim, (cfg.patch_size, cfg.patch_size * 3),
                                        (cfg.patch_stride, cfg.patch_stride * 3), padding=pad)

    def forward(self, image: torch.Tensor, longer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image [B, 1, H, W] (with fusion: [B, 4, H, W], the whole clip then 3 crops) -> tokens [B, N, C].

        `longer` [B] bool marks the clips (longer than the window) whose crops are fused in.
        """
        if hasattr(self, "fusion_model"):
            return self.norm(self.fuse(image, longer).flatten(2).transpose(1, 2))
        if not self.as_matmul:
            return self.norm(self.proj(image).flatten(2).transpose(1, 2))  # [B, tokens, C]
        b, c, h, w = image.shape
        p = self.proj.kernel_size[0]
        patches = (
            image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
        )
        return self.norm(F.linear(patches, self.proj.weight.flatten(1), self.proj.bias))  # [B, tokens, C]

    def fuse(self, image: torch.Tensor, longer: Optional[torch.Tensor]) -> torch.Tensor:
        """LAION's fusion patch embedding: [B, 4, H, W] -> [B, C, H/p, W/p]."""
        whole = self.proj(image[:, :1])
        if longer is None or not bool(longer.any()):
            return whole
        idx = longer.nonzero().flatten()
        crops = image[idx, 1:]  # [b, 3, H, W]
        b, n, h, w = crops.shape
        local = self.mel_conv2d(crops.reshape(b * n, 1, h, w))  # [b*3, C, H/p, W/3p]
        local = local.view(b, n, *local.shape[1:]).permute(0, 2, 3, 1, 4).flatten(3)  # the crops side by side
        local = F.pad(local, (0, whole.shape[-1] - local.shape[-1]))
        return whole.index_put((idx,), self.fusion_model(whole[idx], local))


@register_audio_encoder("htsat", HTSATConfig)
class HTSATEncoder(nn.Module):
    """Waveform [B, T] at `cfg.sample_rate` -> HTSAT embedding [B, cfg.out_dim]."""

    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_dim = cfg.out_dim
        self.frontend, self.spec_augmenter, self.bn0 = build_mel_stem(cfg, frames=cfg.max_frames)
        self.patch_embed = PatchEmbed(cfg)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.layers = self._build_layers(cfg)
        self.norm = nn.LayerNorm(cfg.out_dim)
        final_grid = cfg.spec_size // cfg.patch_stride // 2 ** (len(cfg.depths) - 1)
        if cfg.enable_tscam:
            self.tscam_conv = nn.Conv2d(cfg.out_dim, cfg.num_classes, (final_grid // cfg.freq_ratio, 3), padding=(0, 1))
            self.head = nn.Linear(cfg.num_classes, cfg.num_classes)  # unused, kept for msclap's state dict
        else:
            self.head = nn.Linear(cfg.out_dim, cfg.num_classes)
        self.apply(_init_weights)
        if not cfg.train_classifier_head:
            for module in (getattr(self, "tscam_conv", None), self.head):
                if module is not None:
                    module.requires_grad_(False)

    @staticmethod
    def _build_layers(cfg: HTSATConfig) -> nn.ModuleList:
        grid = cfg.spec_size // cfg.patch_stride
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            first = sum(cfg.depths[:i])
            layers.append(BasicLayer(
                dim=cfg.embed_dim * 2**i, resolution=(grid // 2**i, grid // 2**i), depth=depth,
                num_heads=cfg.num_heads[i], window=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
                drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate, drop_path_rates=rates[first:first + depth],
                use_downsample=i < len(cfg.depths) - 1, use_checkpointing=cfg.use_checkpointing,
                attention=cfg.attention,
            ))
        return layers

    def valid_frames(self, wave: torch.Tensor, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """[B, frames] False for padding frames with `mask_padding` on (no lengths: none padded), else None."""
        if not self.cfg.mask_padding:
            return None
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], device=wave.device)
        frames = 1 + wave.shape[1] // self.cfg.hop_length
        return compute_valid_frames(lengths.to(wave.device), frames, self.cfg.hop_length, wave.shape[1])

    def pad_to_image(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad log-mel [B, frames, n_mels] after bn0 to the image's `spec_size * freq_ratio` frames.

        The added frames take bn0's neutral value (its bias, the normalised mean) and are marked
        padding in the returned `valid`. With `mask_padding` a short input is padded like this
        rather than stretched in time (as msclap does): a clip's image does not depend on how
        much audio follows it.
        """
        extra = self.cfg.spec_size * self.cfg.freq_ratio - feats.shape[1]
        if extra <= 0:
            return feats, valid
        neutral = self.bn0.bias if self.bn0.affine else feats.new_zeros(feats.shape[2])
        feats = torch.cat([feats, neutral.to(feats.dtype).expand(feats.shape[0], extra, -1)], dim=1)
        return feats, F.pad(valid, (0, extra), value=False)

    def compute_logmel(self, wave: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Log-mel [B, frames, n_mels] after bn0 and, in training, SpecAugment.

        `valid` [B, frames] (False for padding) keeps padded frames out of bn0's statistics.
        """
        feats = self.frontend(wave)
        if feats.shape[1] > self.cfg.max_frames:
            max_samples = (self.cfg.max_frames - 1) * self.cfg.hop_length
            raise ValueError(
                f"HTSAT takes at most {self.cfg.max_frames} frames ({max_samples} samples); "
                f"got {feats.shape[1]} frames ({wave.shape[1]} samples): crop the waveform first"
            )
        return normalise_and_augment(feats, self.bn0, self.spec_augmenter, self.cfg.use_spec_augment, valid)

    def reshape_wav2img(self, feats: torch.Tensor) -> torch.Tensor:
        """Fold log-mel [B, frames, n_mels] into the square image [B, 1, spec_size, spec_size].

        As msclap: stretch time to spec_size * freq_ratio and mel to spec_size // freq_ratio
        (bicubic, align_corners) when shorter, then stack freq_ratio consecutive time slices
        along the mel axis.
        """
        cfg = self.cfg
        x = feats.unsqueeze(1)  # [B, 1, T, F]
        target_t, target_f = cfg.spec_size * cfg.freq_ratio, cfg.spec_size // cfg.freq_ratio
        if x.shape[2] < target_t:
            x = F.interpolate(x, (target_t, x.shape[3]), mode="bicubic", align_corners=True)
        if x.shape[3] < target_f:
            x = F.interpolate(x, (x.shape[2], target_f), mode="bicubic", align_corners=True)
        b, c = x.shape[:2]
        x = x.transpose(2, 3).reshape(b, c, target_f, cfg.freq_ratio, target_t // cfg.freq_ratio)
        return x.permute(0, 1, 3, 2, 4).reshape(b, c, target_f * cfg.freq_ratio, target_t // cfg.freq_ratio)

    def encode_tokens(self, wave: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final normed tokens regrouped by the TSCAM layout: [B, C, freq groups, time].

        With `valid` [B, frames] (mask_padding), the spectrogram is padded to the image's width
        (`pad_to_image`) rather than stretched.
        """
        return self.tokens_from_logmel(self.compute_logmel(wave, valid), valid)

    def tokens_from_logmel(self, feats: torch.Tensor, valid: Optional[torch.Tensor] = None,
                           longer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`encode_tokens` from a log-mel [B, frames, n_mels] (fusion: [B, 4, frames, n_mels]) after bn0."""
        if valid is not None:
            feats, _ = self.pad_to_image(feats, valid)
        if feats.dim() == 4:  # fusion's views: each folded into its own image channel
            folded = self.reshape_wav2img(feats.flatten(0, 1))  # [B * 4, 1, S, S]
            image = folded.view(feats.shape[0], feats.shape[1], *folded.shape[2:])
        else:
            image = self.reshape_wav2img(feats)
        x = self.pos_drop(self.patch_embed(image, longer) if self.cfg.enable_fusion else self.patch_embed(image))
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # [B, tokens, C]
        b, n, c = x.shape
        side = self.cfg.spec_size // self.cfg.patch_stride // 2 ** (len(self.cfg.depths) - 1)
        x = x.transpose(1, 2).reshape(b, c, side, side)
        # Undo the fold: each band of `side // freq_ratio` rows is a later stretch of time.
        bins = side // self.cfg.freq_ratio
        x = x.reshape(b, c, self.cfg.freq_ratio, bins, side).permute(0, 1, 3, 2, 4)
        return x.reshape(b, c, bins, self.cfg.freq_ratio * side)

    def pool_tokens(self, wave: torch.Tensor, lengths: Optional[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(tokens [B, C, bins, time], their mean [B, C], real-time columns [B, time] or None).

        With `mask_padding` and `lengths`, the mean is over the token columns that hold real
        frames only (token-semantic pooling without the padding); otherwise over all, as msclap.
        """
        valid = self.valid_frames(wave, lengths)
        tokens = self.encode_tokens(wave, valid)
        if valid is None:
            return tokens, tokens.flatten(2).mean(dim=2), None
        # Token column j covers the j-th equal run of the padded image's frames: real if one of them is.
        frames = F.pad(valid, (0, self.cfg.spec_size * self.cfg.freq_ratio - valid.shape[1]), value=False)
        columns = frames.reshape(frames.shape[0], tokens.shape[3], -1).any(dim=2)  # [B, time]
        weight = columns.to(tokens.dtype)[:, None, :]  # [B, 1, time]
        pooled = (tokens.mean(dim=2) * weight).sum(dim=2) / weight.sum(dim=2)
        return tokens, pooled, columns

    def embed_logmel(self, logmel: torch.Tensor, longer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The embedding [B, out_dim] of log-mel features [B, frames, n_mels] computed elsewhere.

        For features made outside this model (Hugging Face's `ClapFeatureExtractor`, LAION's
        torchlibrosa front end): they go through bn0 and on, skipping `frontend`. With fusion,
        [B, 4, frames, n_mels] (the whole clip, then 3 crops) and `longer` [B] as LAION's `longer`.
        """
        views = logmel.shape[1] if logmel.dim() == 4 else None
        if (views not in (None, 4) or (views is None) == self.cfg.enable_fusion or logmel.shape[-1] != self.cfg.n_mels
                or logmel.shape[-2] > self.cfg.max_frames):
            shape = "[B, 4, frames, n_mels]" if self.cfg.enable_fusion else "[B, frames, n_mels]"
            raise ValueError(f"expected log-mel {shape} with frames <= {self.cfg.max_frames} and n_mels = "
                             f"{self.cfg.n_mels}; got {list(logmel.shape)}")
        flat = logmel.flatten(0, 1) if views else logmel  # bn0's statistics span every view, as LAION's
        feats = normalise_and_augment(flat, self.bn0, self.spec_augmenter, self.cfg.use_spec_augment, None)
        feats = feats.view(logmel.shape) if views else feats
        return self.tokens_from_logmel(feats, longer=longer).flatten(2).mean(dim=2)

    def fusion_logmel(self, wave: torch.Tensor, clip_samples: int,
                      pad_mode: str = "repeat") -> tuple[torch.Tensor, bool]:
        """LAION's fusion input of one whole recording [T] at the model rate: (log-mel [4, frames, n_mels], longer).

        A recording longer than `clip_samples` gives the whole log-mel shrunk to one window's frames
        (bilinear, as transformers' `ClapFeatureExtractor`) and three window-long crops from the
        front, middle and back thirds of the possible starts; LAION draws each start at random,
        here it is the middle of its third (deterministic). A shorter one is padded to the window
        (`fit_length`'s `pad_mode`; LAION: "repeatpad") and its log-mel repeated four times,
        `longer` False. So is one less than a hop longer than the window (LAION's and transformers'
        corner case): its whole log-mel already has one window's frames, and is taken four times.
        """
        chunk = clip_samples // self.cfg.hop_length + 1
        if len(wave) <= clip_samples:
            padded, _ = fit_length(wave, clip_samples, pad_mode)
            return self.frontend(padded[None])[0].expand(4, -1, -1), False
        mel = self.frontend(wave[None])[0]  # [frames, n_mels]
        if mel.shape[0] == chunk:
            return mel.expand(4, -1, -1), False
        shrunk = F.interpolate(mel[None, None], (chunk, mel.shape[1]), mode="bilinear", align_corners=False)[0, 0]
        thirds = torch.arange(mel.shape[0] - chunk + 1).tensor_split(3)
        starts = [int(third[len(third) // 2]) if len(third) else 0 for third in thirds]
        return torch.stack([shrunk] + [mel[s:s + chunk] for s in starts]), True

    def forward(self, wave: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return msclap's `latent_output`: the mean of the final normed tokens, [B, out_dim].

        `lengths` [B] (real samples per clip) is used only with `mask_padding`.
        """
        return self.pool_tokens(wave, lengths)[1]

    def forward_features(self, wave: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Return `embedding` [B, D], `clipwise_output` [B, K] and `framewise_output` [B, frames, K].

        Outputs are as msclap's with loss_type "clip_bce" (clipwise sigmoid-ed). With
        enable_tscam off msclap gives no latent output; here the embedding is the same mean.
        With `mask_padding` and `lengths`, clipwise outputs average the real time columns only.
        """
        tokens, embedding, columns = self.pool_tokens(wave, lengths)  # tokens [B, C, bins, time]
        if not self.cfg.enable_tscam:
            logits = self.head(embedding)
            return {"embedding": embedding, "clipwise_output": torch.sigmoid(logits)}
        frame_logits = self.tscam_conv(tokens).flatten(2)  # [B, K, time]
        # msclap repeats each token 8 * patch_stride times (8 = 2**3 merges in the default depths).
        repeat = 2 ** (len(self.cfg.depths) - 1) * self.cfg.patch_stride
        framewise = torch.sigmoid(frame_logits).transpose(1, 2).repeat_interleave(repeat, dim=1)
        if columns is None:
            clipwise = torch.sigmoid(frame_logits.mean(dim=2))
        else:
            weight = columns.to(frame_logits.dtype)[:, None, :]
            clipwise = torch.sigmoid((frame_logits * weight).sum(dim=2) / weight.sum(dim=2))
        return {"embedding": embedding, "clipwise_output": clipwise, "framewise_output": framewise}


def _init_weights(module: nn.Module) -> None:
    # As msclap: truncated-normal linears with zero bias, unit LayerNorms; convs keep PyTorch's init.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

