"""Decode, down-mix, resample, crop and pad audio clips (loader side, per sample, on the CPU)."""

from __future__ import annotations

import io
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
    """Resample clips to one target rate, building each rate's kernel once per process."""

    def __init__(self, target_rate: int) -> None:
        self.target_rate = target_rate
        self._kernels: dict[int, torch.nn.Module] = {}

    def __call__(self, audio: torch.Tensor, rate: int) -> torch.Tensor:
        if rate == self.target_rate:
            return audio
        if rate not in self._kernels:
            import torchaudio

            self._kernels[rate] = torchaudio.transforms.Resample(rate, self.target_rate)
        return self._kernels[rate](audio)
