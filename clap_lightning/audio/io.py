"""Decode, down-mix, resample, crop and pad audio clips (loader side, per sample, on the CPU)."""

from __future__ import annotations

import io
import math
from typing import Callable, Optional, Sequence

import numpy as np
import soundfile as sf
import torch


def read_clip(data: bytes, num_samples: Optional[int] | Callable[[int], Optional[int]],
              rng: Optional[np.random.Generator],
              margins: Optional[Callable[[int], tuple[int, int]]] = None) -> tuple[np.ndarray, int, int]:
    """Decode an encoded clip from bytes, seeking to the crop before decoding.

    Args:
        data: encoded audio (FLAC, WAV, OGG, ...).
        num_samples: frames wanted at the file's own rate, or a function of that rate (read
            from the audio header, so metadata that misstates it cannot shorten the clip);
            None reads everything.
        rng: random crop offset when given; otherwise the crop starts at 0 (deterministic).
        margins: file rate -> (left, right) zeros to put around the audio in the returned
            array, decoded straight between them (`Resampler.margins`: the resampler's padding,
            which then costs no copy). The audio is `out[left:len(out) - right]`.

    Returns:
        (mono float32 audio [T] with its margins, sample rate, total frames in the file).

    Raises:
        ValueError: the file holds fewer frames than its header states (truncated).
        soundfile.LibsndfileError: the bytes are not decodable audio.
    """
    with sf.SoundFile(io.BytesIO(data)) as f:
        total, rate = f.frames, f.samplerate
        if callable(num_samples):
            num_samples = num_samples(rate)
        start = 0
        if num_samples is not None and total > num_samples and rng is not None:
            start = int(rng.integers(0, total - num_samples + 1))
        if start:
            f.seek(start)
        wanted = total - start if num_samples is None else min(num_samples, total - start)
        left, right = margins(rate) if margins is not None else (0, 0)
        if f.channels == 1:
            out = np.zeros((left + wanted + right, 1), dtype=np.float32)
            got = len(f.read(wanted, dtype="float32", out=out[left:left + wanted]))
            mono = out[:, 0]
        else:  # down-mix by averaging the channels
            frames = f.read(wanted, dtype="float32", always_2d=True)
            got = len(frames)
            mono = np.zeros(left + wanted + right, dtype=np.float32)
            frames.mean(axis=1, out=mono[left:left + got])
    if got < wanted:  # the header promised more frames than the data holds: a truncated file
        raise ValueError(f"truncated audio: read {got} of {wanted} frames")
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
    crossings, rolloff 0.99), applied as matrix products: the input is cut into overlapping
    blocks of `orig + 2 width` samples, one block per `orig` input samples, and the kernel maps
    each block to its `new` output samples (rates reduced by their gcd). Each output phase
    only touches about 2 width samples of its block, so the phases are split into a few groups,
    each multiplying only the rows it needs; small ratios (3 -> 2) put several blocks side by
    side so the products stay wide. torchaudio runs the full kernel as a strided conv1d; this
    is 2-4x faster on one CPU thread (7 s at 48 -> 44.1, 32 or 16 kHz, 44.1 -> 16 kHz, ...),
    which matters in loader workers. Values agree with torchaudio to float rounding.
    """

    def __init__(self, target_rate: int) -> None:
        self.target_rate = target_rate
        self._kernels: dict[tuple[int, torch.dtype], ResamplePlan] = {}

    def __call__(self, audio: torch.Tensor, rate: int, padded: bool = False,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Resample `audio` [..., T] from `rate` to the target rate.

        With `padded`, `audio` already holds `margins(rate)` zeros around the signal (as
        `read_clip(..., margins=resampler.margins)` decodes it), so no padded copy is made.
        With `out` (1-D audio only), the first `len(out)` resampled samples are written straight
        into it (e.g. a row of the batch being built) and `out` is returned.
        """
        if rate == self.target_rate:
            if out is None:
                return audio
            _check_out(audio.shape, out)
            return out.copy_(audio[:out.shape[0]])
        return self._plan(rate, audio.dtype)(audio, padded, out)

    def margins(self, rate: int) -> tuple[int, int]:
        """(left, right) zeros that `__call__(..., padded=True)` expects around audio at `rate`."""
        if rate == self.target_rate:
            return 0, 0
        plan = self._plan(rate, torch.float32)
        return plan.width, plan.width + plan.orig

    def _plan(self, rate: int, dtype: torch.dtype) -> "ResamplePlan":
        plan = self._kernels.get((rate, dtype))
        if plan is None:
            plan = self._kernels[(rate, dtype)] = ResamplePlan(rate, self.target_rate, dtype)
        return plan


class ResamplePlan:
    """One rate pair's sinc kernel, split into column groups of phases with their row ranges."""

    GROUP_COST = 2000  # multiply-adds per block that one more group costs (slice, call); measured
    MIN_STEP = 64  # input samples per block at least: 3 -> 2 (48 -> 32 kHz) would make a tall, thin GEMM

    def __init__(self, orig_rate: int, new_rate: int, dtype: torch.dtype) -> None:
        kernel, self.orig, self.new, self.width = sinc_resample_kernel(orig_rate, new_rate)
        if self.orig < self.MIN_STEP:  # k blocks side by side as one: the same taps, k times the columns
            k = -(-self.MIN_STEP // self.orig)
            wide = kernel.new_zeros(k * self.orig + 2 * self.width, k * self.new)
            for i in range(k):
                wide[i * self.orig:i * self.orig + kernel.shape[0], i * self.new:(i + 1) * self.new] = kernel
            kernel, self.orig, self.new = wide, k * self.orig, k * self.new
        self.block = kernel.shape[0]
        rows = torch.arange(self.block)[:, None]
        nonzero = kernel != 0
        first = torch.where(nonzero, rows, self.block).min(0).values.tolist()
        last = (torch.where(nonzero, rows, -1).max(0).values + 1).tolist()

        def split(groups: int) -> list[tuple[int, int, int, int]]:
            size = -(-self.new // groups)
            return [(c, min(c + size, self.new), min(first[c:c + size]), max(last[c:c + size]))
                    for c in range(0, self.new, size)]

        def cost(plan: list[tuple[int, int, int, int]]) -> int:
            return sum((c1 - c0) * (r1 - r0) + self.GROUP_COST for c0, c1, r0, r1 in plan)

        best = min((split(g) for g in range(1, min(self.new, 16) + 1)), key=cost)
        self.groups = [(c0, c1, r0, r1, kernel[r0:r1, c0:c1].to(dtype).contiguous()) for c0, c1, r0, r1 in best]

    def __call__(self, audio: torch.Tensor, padded: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Resample [..., T]; with `padded`, T includes `width` zeros before and `width + orig` after.

        With `out` (1-D audio only), its `len(out)` first output samples are written into it.
        """
        lead = audio.shape[:-1]
        if padded:
            length = audio.shape[-1] - 2 * self.width - self.orig
            audio = audio.reshape(-1, audio.shape[-1])
        else:
            length = audio.shape[-1]
            audio = torch.nn.functional.pad(audio.reshape(-1, length), (self.width, self.width + self.orig))
        blocks = audio.unfold(-1, self.block, self.orig)  # [rows, blocks, block]
        samples = -(-self.new * length // self.orig)
        if out is not None:
            _check_out((*lead, samples), out)
            whole, rest = divmod(out.shape[0], self.new)
            self._products(blocks[0, :whole], out[:whole * self.new].view(whole, self.new))
            if rest:  # the last, partial block of output phases
                tail = out.new_empty(1, self.new)
                self._products(blocks[0, whole:whole + 1], tail)
                out[whole * self.new:] = tail[0, :rest]
            return out
        result = audio.new_empty(blocks.shape[0], blocks.shape[1], self.new)
        for row, dest in zip(blocks, result):
            self._products(row, dest)
        return result.flatten(-2)[:, :samples].reshape(*lead, -1)

    def _products(self, blocks: torch.Tensor, dest: torch.Tensor) -> None:
        """dest [n, new] = blocks [n, block] @ kernel, one product per group of phases.

        Each product writes its column slice of `dest` in place: BLAS takes the row stride as
        its leading dimension, so there is no copy (`dest[:, a:b] = x @ taps` would make one).
        """
        for c0, c1, r0, r1, taps in self.groups:
            torch.mm(blocks[:, r0:r1], taps, out=dest[:, c0:c1])


def _check_out(shape: Sequence[int], out: torch.Tensor) -> None:
    """Raise unless `out` is 1-D and no longer than 1-D audio of `shape`."""
    if len(shape) != 1 or out.dim() != 1 or out.shape[0] > shape[0]:
        raise ValueError(f"out= takes 1-D audio and a 1-D out of at most its length, got audio {tuple(shape)} "
                         f"and out {tuple(out.shape)}")


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
    inside = t.abs() < zero_crossings  # outside, torchaudio's clamped taps are ~1e-49: exact zeros here
    t = t.clamp(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t = t * math.pi
    taps = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    taps = torch.where(inside, taps, torch.zeros_like(taps))
    return taps.T.contiguous(), orig, new, width
