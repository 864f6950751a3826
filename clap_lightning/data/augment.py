"""Waveform augmentations of training clips, run in the loader workers (`data.augment`).

Per clip: a random gain, a circular time shift within the crop, and noise from a shard
source at a random signal-to-noise ratio; per batch: mixup of a clip with another clip of
its batch, their captions joined with "and" and their label sets merged (so label-aware
negatives see a new group). Each applies with its own probability; all are off by default.

Resume without replay. A clip's draws come from a generator seeded by its place in the
stream, ``(data.seed, epoch, rank, worker, position, AUGMENT_STREAM)``, and a batch's mixup
draws from the position where the batch ended, exactly like the crop and the caption. A
resumed run rebuilds the same batches from the same positions and so the same
augmentations. Every draw is made whether or not its augmentation fires, so the outcome of
one does not shift the random numbers of another. The noise comes from a bank of the first
`noise_bank` clips of the noise shards, read once per worker (start of each clip), so the
noise stream has no position of its own to checkpoint.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np
import torch

from clap_lightning.data.pipeline import ClipDecoder
from clap_lightning.data.schema import read_labels
from clap_lightning.data.stream import single_pass
from clap_lightning.errors import DataError

MIXUP_WEIGHTS = (0.3, 0.7)  # a mixed clip keeps a uniform share in this range of itself; the rest is its partner


class WaveAugment:
    """Augment decoded training clips in place (picklable: the noise bank is read lazily in each worker).

    Args:
        cfg: the `data.augment` section (an `AugmentConfig`).
        noise_urls: shard URLs of the noise source ([] when noise is off).
        sample_rate: model rate the noise clips are resampled to.
        clip_samples: samples per clip.
        label_field: json field of the label set that mixup merges.
    """

    def __init__(self, cfg: Any, noise_urls: Sequence[str], sample_rate: int, clip_samples: int,
                 label_field: str = "labels") -> None:
        self.cfg = cfg
        self.noise_urls = list(noise_urls)
        self.sample_rate, self.clip_samples, self.label_field = sample_rate, clip_samples, label_field
        self._noise_bank: Optional[torch.Tensor] = None  # [noise_bank, clip_samples]

    @property
    def is_active(self) -> bool:
        """Whether any augmentation can fire."""
        cfg = self.cfg
        return max(cfg.gain_prob, cfg.shift_prob, cfg.noise_prob, cfg.mixup_prob) > 0

    def noise_bank(self) -> torch.Tensor:
        """The noise clips [N, clip_samples], decoded on first use."""
        if self._noise_bank is None:
            decoder = ClipDecoder(self.sample_rate, self.clip_samples, "repeat", is_train=False)
            skipped: Counter = Counter()
            clips = []
            for raw in single_pass(self.noise_urls, skipped):
                sample = decoder(raw)
                if sample is not None:
                    clips.append(sample["audio"])
                if len(clips) == self.cfg.noise_bank:
                    break
            if not clips:
                raise DataError(f"no valid noise clip in data.augment.noise_shards={self.cfg.noise_shards}")
            self._noise_bank = torch.stack(clips)
        return self._noise_bank

    def augment_clip(self, audio: torch.Tensor, rng: np.random.Generator, length: Optional[int] = None) -> None:
        """Gain, shift and add noise to one clip [T], in place, as `rng` draws.

        Only its first `length` samples (a zero-padded clip's real audio) are shifted and get noise,
        at a signal-to-noise ratio measured on them: the padding stays silent and where the mask says.
        """
        cfg = self.cfg
        fires = rng.random(3) < (cfg.gain_prob, cfg.shift_prob, cfg.noise_prob)
        gain_db = rng.uniform(-cfg.gain_db, cfg.gain_db)
        shift = int(rng.integers(-int(cfg.shift_max * len(audio)), int(cfg.shift_max * len(audio)) + 1))
        noise_index, noise_offset = rng.integers(cfg.noise_bank), rng.integers(len(audio))
        snr_db = rng.uniform(*cfg.noise_snr_db)
        if fires[0]:
            audio.mul_(10.0 ** (gain_db / 20.0))
        real = audio if length is None else audio[:length]
        if fires[1] and shift:
            real.copy_(torch.roll(real, shift))
        if fires[2]:
            bank = self.noise_bank()
            noise = torch.roll(bank[int(noise_index) % len(bank)], int(noise_offset))[:len(real)]
            signal_power, noise_power = real.square().mean(), noise.square().mean()
            if signal_power > 0 and noise_power > 0:
                real.add_(noise, alpha=float(torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))))

    def mix_batch(self, samples: list[dict[str, Any]], rng: np.random.Generator) -> None:
        """Mix some clips of a batch with another clip of it, in place; their captions are joined, labels merged."""
        size = len(samples)
        if self.cfg.mixup_prob <= 0 or size < 2:
            return
        fires = rng.random(size) < self.cfg.mixup_prob
        partners = rng.integers(0, size - 1, size)  # among the other size - 1 clips
        weights = rng.uniform(*MIXUP_WEIGHTS, size)
        originals = [(s["audio"].clone(), s["caption"], s["meta"], s["length"]) for s in samples]
        for i in np.flatnonzero(fires):
            j = int(partners[i]) + int(partners[i] >= i)
            audio, caption, meta, length = originals[i]
            other_audio, other_caption, other_meta, other_length = originals[j]
            samples[i]["audio"].copy_(audio * float(weights[i]) + other_audio * (1.0 - float(weights[i])))
            labels = sorted(set(read_labels(meta, self.label_field)) | set(read_labels(other_meta, self.label_field)))
            samples[i].update(caption=f"{caption} and {other_caption}", length=max(length, other_length),
                              meta={**meta, self.label_field: labels})
