"""Log-mel front end and SpecAugment, numerically as torchlibrosa (PANNs, HTSAT, msclap).

torchlibrosa computes the STFT as a Conv1d against a DFT matrix; here it is `torch.stft`
(about 4x faster on CPU), with the same periodic Hann window, centre reflect padding, power
spectrogram, Slaney mel filters (librosa's default) and dB conversion, so released weights
trained on torchlibrosa features see the same inputs (differences are float rounding only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Slaney's auditory-toolbox mel scale, as librosa.hz_to_mel(htk=False): linear below 1 kHz,
# logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0  # where the log part starts
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # = 15 mel
_LOGSTEP = math.log(6.4) / 27.0  # log-part step per mel


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Convert Hz to Slaney mel (librosa `hz_to_mel(htk=False)`)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Convert Slaney mel to Hz (librosa `mel_to_hz(htk=False)`)."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, linear)


def compute_mel_filters(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float,
                        scale: str = "slaney") -> torch.Tensor:
    """Build the Slaney-normalised triangular mel filterbank of `librosa.filters.mel`, or with
    `scale="htk"` torchaudio's HTK-scale filterbank without normalisation (`melscale_fbanks`,
    `norm=None`), which LAION-CLAP's fusion input and transformers' fusion features use.

    Computed in float64 and returned as float32, as librosa does (HTK: as torchaudio computes it).

    Returns:
        [n_fft // 2 + 1, n_mels] filters (transposed like torchlibrosa's `melW`).
    """
    if not 0 <= fmin < fmax:
        raise ValueError(f"mel filters need 0 <= fmin < fmax; got fmin={fmin}, fmax={fmax}")
    if scale == "htk":
        from torchaudio.functional import melscale_fbanks

        return melscale_fbanks(n_fft // 2 + 1, fmin, fmax, n_mels, int(sample_rate), norm=None, mel_scale="htk")
    if scale != "slaney":
        raise ValueError(f"mel scale must be 'slaney' or 'htk', got {scale!r}")
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    # n_mels + 2 band edges equally spaced in mel between fmin and fmax.
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: each triangle has unit area in Hz, so energy per band is constant.
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights.T.astype(np.float32))


def power_to_db(power: torch.Tensor, amin: float = 1e-10, ref: float = 1.0) -> torch.Tensor:
    """Convert power to dB as torchlibrosa's LogmelFilterBank with top_db=None."""
    return 10.0 * torch.log10(power.clamp(min=amin)) - 10.0 * math.log10(max(amin, ref))


# The parameters that decide a log-mel front end's output: a training-format manifest records
# them (`python -m data_recipes prepare`) and the loader refuses features made with others.
FRONTEND_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "mel_sample_rate")
# Front-end switches with the value that manifests written before they existed were made with.
FRONTEND_SWITCHES = {"mel_scale": "slaney", "quantize_int16": False}
# dB of silence: `power_to_db` of zero power (amin 1e-10); zero-padded audio gives this value.
SILENCE_DB = -100.0


def frontend_params(cfg: Any) -> dict[str, float | int]:
    """The `FRONTEND_FIELDS` of an audio encoder config (a dataclass or a mapping) as plain numbers,
    and its `FRONTEND_SWITCHES` (their defaults where the config has none).

    Raises:
        ValueError: a field is missing (named).
    """
    get = cfg.get if isinstance(cfg, Mapping) else lambda name, default=None: getattr(cfg, name, default)
    missing = [name for name in FRONTEND_FIELDS if get(name) is None]
    if missing:
        raise ValueError(f"the audio encoder config lacks front-end field(s) {', '.join(missing)}")
    numbers = {name: (float(get(name)) if name in ("fmin", "fmax") else int(get(name))) for name in FRONTEND_FIELDS}
    return {**numbers, **{name: get(name, default) for name, default in FRONTEND_SWITCHES.items()}}


def frontend_differences(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """`n_mels 128 (model: 64)` for every front-end field whose recorded value differs from the expected one."""
    numbers = [f"{name} {recorded.get(name)!r} (model: {expected.get(name)!r})" for name in FRONTEND_FIELDS
               if recorded.get(name) is None or float(recorded[name]) != float(expected[name])]
    return numbers + [f"{name} {recorded.get(name, default)!r} (model: {expected.get(name, default)!r})"
                      for name, default in FRONTEND_SWITCHES.items()
                      if recorded.get(name, default) != expected.get(name, default)]


def frames_for(samples: int, hop_length: int) -> int:
    """STFT frames of `samples` with centre padding: `LogMelFrontEnd` gives 1 + samples // hop."""
    return 1 + samples // hop_length


class LogMelFrontEnd(nn.Module):
    """Waveform [B, T] -> log-mel [B, frames, n_mels], frames = 1 + T // hop_length.

    Args:
        n_fft: FFT size and window length.
        hop_length: hop between frames, in samples.
        n_mels: number of mel bins.
        fmin: lowest mel band edge (Hz).
        fmax: highest mel band edge (Hz).
        mel_sample_rate: sample rate the mel filters are computed for. msclap 2023 feeds
            44.1 kHz audio to filters computed for 32 kHz (its HTSAT config), so the bands sit
            at 44.1/32 times the nominal frequencies; set it to the input rate for the
            textbook front end.
    """

    def __init__(
        self, n_fft: int, hop_length: int, n_mels: int, fmin: float, fmax: float, mel_sample_rate: float,
        mel_scale: str = "slaney", quantize_int16: bool = False,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.quantize_int16 = quantize_int16
        self._mel_args = (mel_sample_rate, n_fft, n_mels, fmin, fmax, mel_scale)
        # Both buffers are derived from the config, so they stay out of the state dict.
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("mel_filters", compute_mel_filters(*self._mel_args), persistent=False)

    def _apply(self, fn, recurse=True):
        """Move with the module but stay fp32: a whole-model cast (DeepSpeed bf16 runs
        `module.bfloat16()`) would otherwise round the window and filters to bf16."""
        super()._apply(fn, recurse)
        if self.window.dtype != torch.float32:
            device = self.window.device
            self.window = torch.hann_window(self.n_fft, periodic=True, device=device)
            self.mel_filters = compute_mel_filters(*self._mel_args).to(device)
        return self

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform batch [B, T]; got shape {tuple(wave.shape)}")
        # Features stay fp32 under autocast: a bf16 mel matmul would cost ~0.1 dB of precision.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = wave.float()
            if self.quantize_int16:  # LAION-CLAP's int16_to_float32(float32_to_int16(x)): truncated to 16 bits
                wave = torch.trunc(wave.clamp(-1.0, 1.0) * 32767.0) / 32767.0
            spec = torch.stft(
                wave, self.n_fft, hop_length=self.hop_length, window=self.window,
                center=True, pad_mode="reflect", return_complex=True,
            )  # [B, F, frames]
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(power.transpose(1, 2), self.mel_filters)  # [B, frames, n_mels]
            return power_to_db(mel)


def _stripe_mask(batch: int, size: int, drop_width: int, stripes: int, device: torch.device) -> torch.Tensor:
    """Return a bool mask [batch, size], True where one of `stripes` random stripes drops."""
    # As torchlibrosa's DropStripes: width ~ U{0..drop_width-1}, start ~ U{0..size-width-1}.
    width = torch.randint(0, drop_width, (batch, stripes, 1), device=device)
    start = (torch.rand(batch, stripes, 1, device=device) * (size - width)).long()
    pos = torch.arange(size, device=device)
    return ((pos >= start) & (pos < start + width)).any(dim=1)


@dataclass
class SpecAugmentConfig:
    """SpecAugment stripes, sized relative to the spectrogram; the defaults give HTSAT's 64 frames and 8 bins."""

    time_width: float = 0.0625  # widest time stripe, fraction of the frames (HTSAT: of its image's, 64 of 1024)
    time_stripes: int = 2  # time stripes per clip
    freq_width: float = 0.125  # widest frequency stripe, fraction of the mel bins (8 of 64)
    freq_stripes: int = 2  # frequency stripes per clip

    def __post_init__(self) -> None:
        for name in ("time_width", "freq_width"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"spec_augment.{name}: expected a fraction in [0, 1]; got {getattr(self, name)}")
        for name in ("time_stripes", "freq_stripes"):
            if getattr(self, name) < 0:
                raise ValueError(f"spec_augment.{name}: expected a count >= 0; got {getattr(self, name)}")


class SpecAugment(nn.Module):
    """Zero random time and frequency stripes of [B, frames, n_mels] features in training.

    HTSAT's SpecAugmentation (torchlibrosa's DropStripes), with widths given as fractions of
    the spectrogram: of `frames` when given (HTSAT passes its image's frame capacity, so the
    msclap model gets exactly torchlibrosa's 64 frames and 8 bins), else of the input's
    frames. Identity in eval mode. Unlike torchlibrosa it does not write into its input
    (safe for autograd) and draws all stripes at once instead of looping over the batch.
    """

    def __init__(self, cfg: Optional[SpecAugmentConfig] = None, frames: Optional[int] = None) -> None:
        super().__init__()
        self.cfg = cfg or SpecAugmentConfig()
        self.frames = frames

    def drop_widths(self, frames: int, bins: int) -> tuple[int, int]:
        """Return the (time, frequency) drop widths for a [frames, bins] spectrogram; a stripe is narrower."""
        reference = self.frames or frames
        return max(1, round(self.cfg.time_width * reference)), max(1, round(self.cfg.freq_width * bins))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        batch, frames, bins = feats.shape
        time_width, freq_width = self.drop_widths(frames, bins)
        drop_time = _stripe_mask(batch, frames, time_width, self.cfg.time_stripes, feats.device)
        drop_freq = _stripe_mask(batch, bins, freq_width, self.cfg.freq_stripes, feats.device)
        drop = drop_time[:, :, None] | drop_freq[:, None, :]
        return feats.masked_fill(drop, 0.0)


def build_mel_stem(cfg, frames: Optional[int] = None) -> tuple[LogMelFrontEnd, SpecAugment, nn.BatchNorm2d]:
    """Return the (frontend, spec_augmenter, bn0) modules CNN14 and HTSAT both start with.

    Args:
        cfg: an encoder config with `n_fft`, `hop_length`, `n_mels`, `fmin`, `fmax`,
            `mel_sample_rate` and `spec_augment` fields.
        frames: the spectrogram length SpecAugment widths are fractions of (None: each input's).

    The caller assigns them as `self.frontend`, `self.spec_augmenter` and `self.bn0` so the
    state-dict keys stay msclap's.
    """
    frontend = LogMelFrontEnd(cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.fmin, cfg.fmax, cfg.mel_sample_rate,
                              getattr(cfg, "mel_scale", "slaney"), getattr(cfg, "quantize_int16", False))
    spec_augmenter = SpecAugment(cfg.spec_augment, frames)
    return frontend, spec_augmenter, nn.BatchNorm2d(cfg.n_mels)


def compute_valid_frames(lengths: torch.Tensor, frames: int, hop_length: int, samples: int) -> torch.Tensor:
    """[B, frames] True for the frames of real audio, from real samples per clip `lengths` [B].

    A frame is real when its centre (`center=True`: frame i at sample i * hop) lies before the
    clip's length; every frame of a clip that fills the window is real (the last one is centred
    on the end). The first frame always counts, so an empty clip still has one.
    """
    lengths = lengths.to(torch.long)
    valid = torch.arange(frames, device=lengths.device)[None, :] * hop_length < lengths[:, None]
    valid |= (lengths >= samples)[:, None]
    valid[:, 0] = True
    return valid


def masked_batch_norm(feats: torch.Tensor, valid: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """BatchNorm per mel bin of [B, frames, n_mels] whose statistics see only the `valid` [B, frames] frames.

    In training the mean and (biased) variance are taken over the valid frames only and the
    running statistics are updated from them, as `nn.BatchNorm2d` does (unbiased variance,
    `bn.momentum`); in eval the running statistics apply. Padded frames come out at the
    normalised mean (0 before the affine, `bn.bias` after): neutral, not the dB floor.
    """
    weight = valid.to(feats.dtype)[..., None]  # [B, frames, 1]
    if bn.training:
        count = weight.sum()
        mean = (feats * weight).sum((0, 1)) / count  # [n_mels]
        var = ((feats - mean).square() * weight).sum((0, 1)) / count
        if bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.item()
                unbiased = var * count / (count - 1).clamp(min=1)
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
                bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    else:
        mean, var = bn.running_mean, bn.running_var
    normed = (feats - mean) * torch.rsqrt(var + bn.eps) * weight
    return normed * bn.weight + bn.bias if bn.affine else normed


def batch_norm_bins(feats: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """`bn` (a BatchNorm2d over mel bins, msclap's layout) applied to [B, frames, n_mels] as one
    [B * frames, n_mels] batch.

    The same statistics, running-stat update and output as `bn` on the [B, n_mels, frames, 1] view
    msclap uses, but on a plain 2-D input: torch 2.11's CPU batch-norm backward on that 4-D view
    gives wrong weight and bias gradients when the gradient arrives in another memory layout than
    the input (the size-1 last dim makes the view look channels-last), as it does inside HTSAT.
    """
    momentum = bn.momentum if bn.momentum is not None else 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative average, as nn.BatchNorm2d
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or bn.running_mean is None
    flat = F.batch_norm(feats.reshape(-1, feats.shape[-1]), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        use_batch_stats, momentum, bn.eps)
    return flat.view(feats.shape)


def normalise_and_augment(
    feats: torch.Tensor, bn0: nn.BatchNorm2d, spec_augmenter: SpecAugment, use_spec_augment: bool,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Apply bn0 per mel bin to log-mel [B, frames, n_mels], then SpecAugment if enabled.

    With `valid` [B, frames] (False for padding), padded frames are left out of bn0's
    statistics and set to its mean (`masked_batch_norm`).
    """
    # bn0 normalises each mel bin over batch and time (msclap: BatchNorm2d on [B, mel, T, 1]).
    # The fp32 features meet bn0 in its own dtype (bf16 when the whole model was cast).
    feats = feats.to(bn0.weight.dtype)
    # In eval the masked form is the same arithmetic, so it needs no host-side `valid.all()` check
    # (which also stops a graph export); in training all-valid batches keep BatchNorm's own kernel.
    if valid is not None and (not bn0.training or not valid.all()):
        feats = masked_batch_norm(feats, valid, bn0)
    else:
        feats = batch_norm_bins(feats, bn0)
    return spec_augmenter(feats) if use_spec_augment else feats
