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

    Short clips are tiled ("repeat", as msclap's loader), zero-padded ("zero"), or given as many
    whole copies as fit and then zeros ("repeatpad", LAION-CLAP's and transformers' default).

    Returns:
        (clip [num_samples], samples that are not padding). A tiled clip has no padding: its
        copies are audio the encoder is meant to see; a zero-padded one has its real samples.
    """
    length = audio.shape[0]
    if length >= num_samples:
        return audio[:num_samples], num_samples
    if pad_mode == "repeat":
        repeats = -(-num_samples // length)
        return audio.repeat(repeats)[:num_samples], num_samples
    if pad_mode == "repeatpad":  # the zeros after the copies are padding, like LAION's
        copies = audio.repeat(num_samples // length)
        return torch.nn.functional.pad(copies, (0, num_samples - len(copies))), num_samples
    return torch.nn.functional.pad(audio, (0, num_samples - length)), length


def cut_windows(
    wave: torch.Tensor, num_samples: int, hop: int, pad_mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a whole recording [T] into overlapping clips of `num_samples`, one every `hop` samples.

    The last window is placed to end with the recording, so every window is full audio and the
    whole recording is covered; a recording no longer than one window gives one clip, padded
    as `fit_length` pads.

    Returns:
        (clips [W, num_samples], samples that are not padding [W], window starts in samples [W]).
    """
    if hop < 1:
        raise ValueError(f"window hop must be at least one sample, got {hop}")
    if len(wave) <= num_samples:
        clip, length = fit_length(wave, num_samples, pad_mode)
        return clip[None], torch.tensor([length]), torch.zeros(1, dtype=torch.long)
    starts = list(range(0, len(wave) - num_samples, hop)) + [len(wave) - num_samples]
    clips = torch.stack([wave[s:s + num_samples] for s in starts])
    return clips, torch.full((len(starts),), num_samples), torch.tensor(starts)


# torchaudio.functional.resample's defaults: Hann-windowed sinc, 6 zero crossings, rolloff 0.99.
ZERO_CROSSINGS = 6
ROLLOFF = 0.99


class Resampler:
    """Resample clips to one target rate, building each rate's kernel once per process.

    The same windowed-sinc filter as `torchaudio.functional.resample` (Hann window, 6 zero
    crossings, rolloff 0.99). A rate pair whose reduced ratio is large (16001 -> 44100 Hz does
    not reduce: a dense kernel of 16001 x 44100 taps, 5.6 GB) takes `DirectResamplePlan`, which
    evaluates the same taps per output sample, with cost bounded by the clip's length
    (`MAX_DENSE_TAPS`). Otherwise the filter is applied as matrix products (`ResamplePlan`): the
    input is cut into overlapping blocks of `orig + 2 width` samples, one block per `orig` input
    samples, and the kernel maps each block to its `new` output samples (rates reduced by their
    gcd). Each output phase only touches about 2 width samples of its block, so the phases are
    split into a few groups,
    each multiplying only the rows it needs; small ratios (3 -> 2) put several blocks side by
    side so the products stay wide. torchaudio runs the full kernel as a strided conv1d; this
    is 2-4x faster on one CPU thread (7 s at 48 -> 44.1, 32 or 16 kHz, 44.1 -> 16 kHz, ...),
    which matters in loader workers. Both agree with torchaudio to float rounding.
    """

    MAX_DENSE_TAPS = 1 << 22  # entries of the dense kernel (32 MB in float64) above which the direct plan is used

    def __init__(self, target_rate: int) -> None:
        self.target_rate = target_rate
        self._kernels: dict[tuple[int, torch.dtype], ResamplePlan | DirectResamplePlan] = {}

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
        return self._plan(rate, torch.float32).margins

    def _plan(self, rate: int, dtype: torch.dtype) -> "ResamplePlan | DirectResamplePlan":
        plan = self._kernels.get((rate, dtype))
        if plan is None:
            orig, new, width = reduced_rates(rate, self.target_rate)
            dense = (orig + 2 * width) * new <= self.MAX_DENSE_TAPS
            plan_cls = ResamplePlan if dense else DirectResamplePlan
            plan = self._kernels[(rate, dtype)] = plan_cls(rate, self.target_rate, dtype)
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
        self.margins = (self.width, self.width + self.orig)  # zeros `padded` input holds before and after

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


class DirectResamplePlan:
    """The windowed-sinc filter with each output sample's taps evaluated at its exact position.

    Output sample m lies at input position m orig / new (rates reduced by their gcd); it is
    the sum of the input samples n within the filter's reach (|n - m orig / new| <= width)
    weighted by `windowed_sinc((n / orig - m / new) base)`, the values `sinc_resample_kernel`
    tabulates per phase. So the result equals torchaudio's and `ResamplePlan`'s to float
    rounding (tested: within 2e-6 in float32, 1e-11 in float64), for any ratio: time is
    O(output samples x (2 width + 1)) and memory is bounded by `CHUNK_TAPS` taps at a time,
    where a dense kernel would hold orig x new taps. The taps are computed in float64 by the
    angle-sum identities: sin and cos once per output sample and once per tap offset, then
    products, so 16001 or 48001 -> 44100 Hz (15 taps per output sample) costs tens of ms for 3 s.
    """

    CHUNK_TAPS = 1 << 20  # taps weighed per step: ~8 MB per float64 temporary

    def __init__(self, orig_rate: int, new_rate: int, dtype: torch.dtype) -> None:
        self.orig, self.new, self.width = reduced_rates(orig_rate, new_rate)
        self.base = min(self.orig, self.new) * ROLLOFF
        self.margins = (self.width, self.width)  # zeros `padded` input holds before and after
        self._offsets = torch.arange(-self.width, self.width + 1)  # taps k: input samples n0 + k around each position
        # Tap k of an output at input position n0 + frac sits at t = (k - frac) step.
        self._step = self.base / self.orig
        angle = math.pi * self._offsets.double() * self._step
        scale = self._step / math.pi  # windowed_sinc's scale, and the pi of sin(pi t) / (pi t)
        self._tap_terms = (torch.sin(angle) * scale, torch.cos(angle) * scale,
                           0.5 * torch.sin(angle / ZERO_CROSSINGS), 0.5 * torch.cos(angle / ZERO_CROSSINGS))
        # Only taps with |k| >= ZERO_CROSSINGS / step - 1 can reach |t| >= ZERO_CROSSINGS (zero there).
        self._edges = (self._offsets.abs() >= ZERO_CROSSINGS / self._step - 1).nonzero()[:, 0]

    def __call__(self, audio: torch.Tensor, padded: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Resample [..., T] as `ResamplePlan.__call__` does (same `padded` and `out` contracts)."""
        lead = audio.shape[:-1]
        audio = audio.reshape(-1, audio.shape[-1])
        if padded:
            length = audio.shape[-1] - sum(self.margins)
        else:
            length = audio.shape[-1]
            audio = torch.nn.functional.pad(audio, self.margins)
        samples = -(-self.new * length // self.orig)
        if out is not None:
            _check_out((*lead, samples), out)
            dest = out[None]
        else:
            dest = audio.new_empty(audio.shape[0], samples)
        step = max(1, self.CHUNK_TAPS // len(self._offsets))
        for start in range(0, dest.shape[1], step):
            m = torch.arange(start, min(start + step, dest.shape[1]))
            position = m * self.orig
            n0, rest = position // self.new, position % self.new  # m orig / new = n0 + rest / new
            taps = self._taps(rest.double() / self.new).to(audio.dtype)  # [outputs, taps]
            index = n0[:, None] + self._offsets + self.margins[0]
            dest[:, start:start + len(m)] = (audio[:, index] * taps).sum(-1)
        return out if out is not None else dest.reshape(*lead, -1)

    def _taps(self, frac: torch.Tensor) -> torch.Tensor:
        """`windowed_sinc` at t = (k - frac) step for fractions [M] and taps k, in float64: [M, taps].

        sin(pi t) and cos(pi t / Z) come from the angle-sum identities, so sin and cos are taken
        once per output sample and once per tap, not once per (output, tap).
        """
        sin_k, cos_k, sin_kw, cos_kw = self._tap_terms
        angle = (-math.pi * self._step) * frac[:, None]  # [M, 1]: the part of pi t that depends on frac
        t = (self._offsets - frac[:, None]).mul_(self._step)
        taps = torch.sin(angle) * cos_k
        taps.addcmul_(torch.cos(angle), sin_k)  # sin(pi t) step / pi
        window = torch.cos(angle / ZERO_CROSSINGS) * cos_kw
        window.addcmul_(torch.sin(angle / ZERO_CROSSINGS), sin_kw, value=-1).add_(0.5)  # cos(pi t / 2Z)^2
        taps.mul_(window).div_(t)
        taps[frac == 0, self.width] = self._step  # t = 0: sinc(0) = 1
        edges = taps[:, self._edges]
        taps[:, self._edges] = edges.masked_fill_(t[:, self._edges].abs() >= ZERO_CROSSINGS, 0.0)
        return taps


def _check_out(shape: Sequence[int], out: torch.Tensor) -> None:
    """Raise unless `out` is 1-D and no longer than 1-D audio of `shape`."""
    if len(shape) != 1 or out.dim() != 1 or out.shape[0] > shape[0]:
        raise ValueError(f"out= takes 1-D audio and a 1-D out of at most its length, got audio {tuple(shape)} "
                         f"and out {tuple(out.shape)}")


def reduced_rates(orig_rate: int, new_rate: int) -> tuple[int, int, int]:
    """Return (orig, new, width): the rates divided by their gcd and the filter's reach in input samples."""
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    return orig, new, math.ceil(ZERO_CROSSINGS * orig / (min(orig, new) * ROLLOFF))


def windowed_sinc(t: torch.Tensor, scale: float) -> torch.Tensor:
    """Hann-windowed sinc taps at `t` (in cutoff periods) times `scale`; zero where |t| >= ZERO_CROSSINGS."""
    inside = t.abs() < ZERO_CROSSINGS  # outside, torchaudio's clamped taps are ~1e-49: exact zeros here
    t = t.clamp(-ZERO_CROSSINGS, ZERO_CROSSINGS)
    window = torch.cos(t * math.pi / ZERO_CROSSINGS / 2) ** 2
    t = t * math.pi
    taps = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * scale
    return torch.where(inside, taps, torch.zeros_like(taps))


def sinc_resample_kernel(orig_rate: int, new_rate: int) -> tuple[torch.Tensor, int, int, int]:
    """Return (kernel [orig + 2 width, new], orig, new, width) for rates reduced by their gcd.

    Column j holds the Hann-windowed sinc taps of output phase j over one input block; the
    values are torchaudio's `_get_sinc_resample_kernel`, kept in float64 and cast per call.
    """
    orig, new, width = reduced_rates(orig_rate, new_rate)
    base = min(orig, new) * ROLLOFF
    idx = torch.arange(-width, width + orig, dtype=torch.float64) / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + idx) * base
    return windowed_sinc(t, base / orig).T.contiguous(), orig, new, width
