"""Waveform augmentations (data.augment): what each does, determinism under the seed, resume, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clap_lightning.config import AugmentConfig, ExperimentConfig, load_config
from clap_lightning.data.augment import WaveAugment
from clap_lightning.data.pipeline import ClapStream, ClipDecoder, Collate
from clap_lightning.errors import ConfigError
from tests.shard_factory import RATE, encode, meta_json, tone, write_tar
from tests.unit.test_loader import FakeTokenizer

CLIP = 4000  # samples per clip at the model rate (8 kHz shards -> 16 kHz: resampled)


def write_tones(directory, n_shards: int = 3, per_shard: int = 6) -> list[str]:
    """Shards of tones at different pitches, each with its own caption and label."""
    urls = []
    for s in range(n_shards):
        members = []
        for i in range(per_shard):
            key, freq = f"t-{s}-{i}", 200.0 + 50 * (s * per_shard + i)
            members += [
                (f"{key}.flac", encode(tone(0.4, freq=freq))),
                (f"{key}.json", meta_json(key, [f"tone {freq:g}"])),
            ]
        urls.append(str(write_tar(directory / f"t-{s:06d}.tar", members)))
    return urls


def write_noise(directory, count: int = 4) -> list[str]:
    rng = np.random.default_rng(0)
    members = []
    for i in range(count):
        members += [(f"n-{i}.flac", encode((0.1 * rng.standard_normal(RATE // 2)).astype(np.float32))),
                    (f"n-{i}.json", meta_json(f"n-{i}", ["noise"]))]
    return [str(write_tar(directory / "n-000000.tar", members))]


def build_augment(noise_urls=(), **probs) -> WaveAugment:
    cfg = AugmentConfig(**probs, noise_shards="noise" if noise_urls else "")
    return WaveAugment(cfg, noise_urls, sample_rate=16000, clip_samples=CLIP)


def clip(seed: int = 0) -> torch.Tensor:
    return 0.2 * torch.randn(CLIP, generator=torch.Generator().manual_seed(seed))


def test_all_off_by_default_and_inactive():
    augment = build_augment()
    assert not augment.is_active
    stream = ClapStream([[]], ClipDecoder(16000, CLIP, "zero", True), Collate(FakeTokenizer()), 4, is_train=True,
                        augment=augment)
    assert stream.augment is None  # the training loop skips it: the stream is exactly the unaugmented one


def test_gain_scales_the_whole_clip_within_its_range():
    augment = build_augment(gain_prob=1.0, gain_db=6.0)
    for seed in range(5):
        audio = clip()
        augment.augment_clip(audio, np.random.default_rng(seed))
        ratio = audio / clip()
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
        assert 10 ** (-6 / 20) <= ratio[0].item() <= 10 ** (6 / 20) and ratio[0].item() != pytest.approx(1.0)


def test_shift_rolls_the_clip_within_the_crop():
    augment = build_augment(shift_prob=1.0, shift_max=0.25)
    audio = clip()
    augment.augment_clip(audio, np.random.default_rng(3))
    shifts = [k for k in range(-CLIP // 4, CLIP // 4 + 1) if torch.equal(audio, torch.roll(clip(), k))]
    assert len(shifts) == 1 and shifts[0] != 0


def test_noise_is_added_at_a_snr_in_range(tmp_path):
    augment = build_augment(write_noise(tmp_path), noise_prob=1.0, noise_snr_db=[10.0, 20.0])
    assert augment.noise_bank().shape == (4, CLIP)
    for seed in range(4):
        audio = clip()
        augment.augment_clip(audio, np.random.default_rng(seed))
        noise = audio - clip()
        snr = 10 * torch.log10(clip().square().mean() / noise.square().mean()).item()
        assert 10.0 - 1e-3 <= snr <= 20.0 + 1e-3


def test_mixup_mixes_two_clips_of_the_batch_and_joins_their_captions():
    augment = build_augment(mixup_prob=1.0)
    samples = [{"audio": clip(i), "caption": f"sound {i}", "length": CLIP, "meta": {"labels": [f"c{i}"]}}
               for i in range(4)]
    augment.mix_batch(samples, np.random.default_rng(0))
    for i, sample in enumerate(samples):
        first, partner = sample["caption"].split(" and ")
        assert first == f"sound {i}" and partner != first
        j = int(partner.split()[1])
        assert sorted(sample["meta"]["labels"]) == sorted([f"c{i}", f"c{j}"])
        # the clip is a convex mix of the two originals, with a weight in (0.3, 0.7)
        weight = ((sample["audio"] - clip(j)) @ (clip(i) - clip(j)) / (clip(i) - clip(j)).square().sum()).item()
        assert 0.3 <= weight <= 0.7
        torch.testing.assert_close(sample["audio"], weight * clip(i) + (1 - weight) * clip(j), atol=1e-5, rtol=0)


def make_stream(urls, augment, **kwargs) -> ClapStream:
    decoder = ClipDecoder(sample_rate=16000, clip_samples=CLIP, pad_mode="zero", is_train=True)
    return ClapStream([urls], decoder, Collate(FakeTokenizer()), 4, is_train=True, shuffle_buffer=5,
                      batches_per_worker=4, seed=7, augment=augment, **kwargs)


def contents(batches) -> list[tuple]:
    return [(tuple(b["key"]), tuple(b["captions"]), b["audio"].clone()) for b in batches]


def assert_same(a, b) -> None:
    assert [x[:2] for x in a] == [y[:2] for y in b]
    assert all(torch.equal(x[2], y[2]) for x, y in zip(a, b))


def test_augmented_stream_is_deterministic_and_survives_a_mid_epoch_resume(tmp_path):
    urls, noise = write_tones(tmp_path), write_noise(tmp_path)
    probs = dict(gain_prob=0.5, shift_prob=0.5, noise_prob=0.5, mixup_prob=0.5)
    full = contents(make_stream(urls, build_augment(noise, **probs)))
    again = contents(make_stream(urls, build_augment(noise, **probs)))
    assert_same(full, again)
    plain = contents(make_stream(urls, build_augment()))
    assert [x[0] for x in plain] == [x[0] for x in full]  # augmentation takes no sample from the stream
    assert not all(torch.equal(x[2], y[2]) for x, y in zip(plain, full))
    assert any(" and " in caption for x in full for caption in x[1])  # some clips were mixed
    assert any(" and " not in caption for x in full for caption in x[1])  # and some not
    # Resume after 2 batches: the rest of the epoch with the same clips, captions and augmentations.
    where = make_stream(urls, build_augment(noise, **probs))
    positions = [b["stream"]["position"] for b in where]
    resumed = contents(make_stream(urls, build_augment(noise, **probs),
                                   resume={"epoch": 0, "workers": [[2, positions[1]]]}))
    assert len(resumed) == 2
    assert_same(resumed, full[2:])


@pytest.mark.parametrize("overrides, message", [
    (["data.augment.noise_prob=0.5"], "data.augment.noise_prob is set but data.augment.noise_shards is empty"),
    (["data.augment.gain_prob=1.5"], "data.augment.gain_prob must be >= 0 and <= 1, got 1.5"),
    (["data.augment.noise_snr_db=[30,5]"], r"data.augment.noise_snr_db must be \[low, high\] with low <= high"),
])
def test_bad_augment_settings_fail_at_load_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ExperimentConfig, None, overrides)


def test_a_zero_padded_clip_is_shifted_and_noised_within_its_real_samples(tmp_path):
    """The padding stays silent and after the sound, where the encoder's mask puts it; the SNR is the sound's."""
    length = CLIP // 4
    padded = torch.cat([clip()[:length], torch.zeros(CLIP - length)])
    shifted = padded.clone()
    build_augment(shift_prob=1.0, shift_max=0.25).augment_clip(shifted, np.random.default_rng(3), length)
    shifts = [k for k in range(1, length) if torch.equal(shifted[:length], torch.roll(padded[:length], k))]
    assert len(shifts) == 1 and torch.equal(shifted[length:], padded[length:])  # rolled within the sound
    noised = padded.clone()
    augment = build_augment(write_noise(tmp_path), noise_prob=1.0, noise_snr_db=[10.0, 10.0])
    augment.augment_clip(noised, np.random.default_rng(0), length)
    assert torch.equal(noised[length:], padded[length:])
    noise = noised[:length] - padded[:length]
    snr = 10 * torch.log10(padded[:length].square().mean() / noise.square().mean()).item()
    assert snr == pytest.approx(10.0, abs=1e-3)
