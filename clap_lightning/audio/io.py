"""Decode, down-mix, resample, crop and pad audio clips (loader side, per sample, on the CPU)."""

from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np
import soundfile as sf
import torch


def read_clip(data: bytes, num_samples: Optional[int], rng: Optional[np.random.Generator]) -> tuple[np.ndarray, int, int]:
    """Decode an encoded clip from bytes, seeking to the crop before decoding.

    Args:
        data: encoded audio (FLAC, WAV, OGG, ...).
        num_samples: frames wanted at the file's own rate; None reads everything.
        rng: random crop offset when given; otherwise the crop starts at 0 (deterministic).

    Returns:
        (mono float32 audio [T], sample rate, total frames in the file).

    Raises:
        ValueError: the file holds fewer frames than its header states (truncated).
        soundfile.LibsndfileError: the bytes are not decodable audio.
    """
    with sf.SoundFile(io.BytesIO(data)) as f:
        total = f.frames
        start = 0
        if num_samples is not None and total > num_samples and rng is not None:
            start = int(rng.integers(0, total - num_samples + 1))
        if start:
            f.seek(start)
        audio = f.read(frames=-1 if num_samples is None else num_samples, dtype="float32", always_2d=True)
        rate = f.samplerate
    expected = total - start if num_samples is None else min(num_samples, total - start)
    if len(audio) < expected:  # the header promised more frames than the data holds: a truncated file
        raise ValueError(f"truncated audio: read {len(audio)} of {expected} frames")
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)  # mean() of one channel is a slow copy
    return mono, rate, total


def fit_length(audio: torch.Tensor, num_samples: int, pad_mode: str) -> tuple[torch.Tensor, int]:
    """Crop or pad a mono clip [T] to `num_samples`.

    Short clips are tiled ("repeat", as msclap's loader) or zero-padded ("zero").

    Returns:
        (clip [num_samples], number of real, non-padding samples).
    """
    length = audio.shape[0]
    if length >= num_samples:
        return audio[:num_samples], num_samples
    if pad_mode == "repeat":
        repeats = -(-num_samples // length)
        return audio.repeat(repeats)[:num_samples], length
    return torch.nn.functional.pad(audio, (0, num_samples - length)), length


class Resampler:
    """Resample clips to one target rate, building each rate's kernel once per process.

    The same windowed-sinc filter as `torchaudio.functional.resample` (Hann window, 6 zero
    crossings, rolloff 0.99), applied as one matrix product: the input is cut into overlapping
    blocks of `orig + 2 width` samples, one block per `orig` input samples, and the kernel maps
    each block to its `new` output samples (rates reduced by their gcd). torchaudio runs the same
    kernel as a strided conv1d; the GEMM is about 2.5x faster on one CPU thread (48 -> 44.1 kHz),
    which matters in loader workers.
    """

    def __init__(self, target_rate: int) -> None:
        self.target_rate = target_rate
        self._kernels: dict[int, tuple[torch.Tensor, int, int, int]] = {}

    def __call__(self, audio: torch.Tensor, rate: int) -> torch.Tensor:
        """Resample `audio` [..., T] from `rate` to the target rate."""
        if rate == self.target_rate:
            return audio
        if rate not in self._kernels:
            self._kernels[rate] = sinc_resample_kernel(rate, self.target_rate)
        kernel, orig, new, width = self._kernels[rate]
        length = audio.shape[-1]
        flat = audio.reshape(-1, length)
        blocks = torch.nn.functional.pad(flat, (width, width + orig)).unfold(-1, kernel.shape[0], orig)
        out = (blocks @ kernel.to(audio.dtype)).flatten(-2)  # [rows, blocks * new]
        return out[:, : -(-new * length // orig)].reshape(*audio.shape[:-1], -1)


def sinc_resample_kernel(orig_rate: int, new_rate: int, zero_crossings: int = 6,
                         rolloff: float = 0.99) -> tuple[torch.Tensor, int, int, int]:
    """Return (kernel [orig + 2 width, new], orig, new, width) for rates reduced by their gcd.

    Column j holds the Hann-windowed sinc taps of output phase j over one input block; the
    values are torchaudio's `_get_sinc_resample_kernel`, kept in float64 and cast per call.
    """
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64) / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + idx) * base
    t = t.clamp(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t = t * math.pi
    taps = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return taps.T.contiguous(), orig, new, width
