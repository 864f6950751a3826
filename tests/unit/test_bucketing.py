"""data.pad_mode none with duration buckets: batches of similar lengths, every drawn clip once, resumable."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from clap_lightning.config import ConfigError, ExperimentConfig, load_config
from clap_lightning.audio.frontend import SILENCE_DB
from clap_lightning.data.pipeline import ClapStream, ClipDecoder, Collate, LogMelDecoder
from clap_lightning.data.schema import LOGMEL_EXT
from tests.shard_factory import bad_members, encode, meta_json, write_tar
from tests.unit.test_loader import FakeTokenizer

RATE = 16000
CLIP = 16000  # 1 s at the model rate; the clips are 0.1-1.0 s, so most batches are padding without buckets
DEMO = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "demo.yaml"


def write_mixed_lengths(directory: Path, shards: int = 4, per_shard: int = 24) -> list[str]:
    rng = np.random.default_rng(0)
    urls = []
    for s in range(shards):
        members = []
        for i in range(per_shard):
            key = f"m-{s}-{i}"
            seconds = float(rng.uniform(0.1, 1.0))
            audio = (0.3 * np.sin(np.arange(int(seconds * RATE)) * 0.05)).astype(np.float32)
            members += [(f"{key}.flac", encode(audio, RATE)), (f"{key}.json", meta_json(key, rate=RATE))]
        urls.append(str(write_tar(directory / f"m-{s:06d}.tar", members)))
    return urls


def stream(urls, bucket_batches: int, seed: int = 0, batches: int = 8, **kwargs) -> ClapStream:
    decoder = ClipDecoder(sample_rate=RATE, clip_samples=CLIP, pad_mode="none", is_train=True)
    return ClapStream([urls], decoder, Collate(FakeTokenizer(), cut_to_longest=True), 6, is_train=True,
                      seed=seed, shuffle_buffer=10, batches_per_worker=batches, bucket_batches=bucket_batches,
                      **kwargs)


def padding_fraction(batches) -> float:
    lengths = torch.cat([b["audio_length"] for b in batches]).double()
    return 1.0 - float(lengths.sum()) / sum(b["audio"].numel() for b in batches)


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


@pytest.fixture(scope="module")
def urls(tmp_path_factory) -> list[str]:
    return write_mixed_lengths(tmp_path_factory.mktemp("mixed"))


def test_buckets_cut_padding_and_use_the_same_clips_once(urls):
    plain, bucketed = list(stream(urls, 0)), list(stream(urls, 4))
    assert len(plain) == len(bucketed) == 8
    # the same positions of the same stream (which resamples shards) are drawn: the same clips as
    # often as without buckets, regrouped into other batches
    assert sorted(keys(bucketed)) == sorted(keys(plain))
    assert keys(bucketed) != keys(plain)
    assert padding_fraction(bucketed) < 0.5 * padding_fraction(plain)
    for batch in bucketed:  # each clip's samples are intact in its row, the rest of the row (if any) zero
        assert batch["audio"].shape[1] == int(batch["audio_length"].max())
        for row, length in zip(batch["audio"], batch["audio_length"]):
            assert bool(row[:length].abs().sum() > 0) and bool((row[length:] == 0).all())


def test_bucketed_batches_repeat_under_a_seed_and_change_with_it(urls):
    first, again, other = list(stream(urls, 4)), list(stream(urls, 4)), list(stream(urls, 4, seed=1))
    assert keys(first) == keys(again)
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(first, again))
    assert keys(first) != keys(other)


@pytest.mark.parametrize("consumed", [1, 3, 4, 6])  # inside a pool, at its end, inside the second one
def test_a_resume_yields_exactly_the_batches_not_yet_consumed(urls, consumed):
    full = list(stream(urls, 4))
    where = full[consumed - 1]["stream"]
    resumed = list(stream(urls, 4, resume={"epoch": 0, "workers": [[where["batches"], where["position"],
                                                                     where["pool"]]]}))
    assert keys(resumed) == keys(full[consumed:])
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(resumed, full[consumed:]))


def test_a_pool_is_not_larger_than_what_the_epoch_has_left(urls):
    assert len(list(stream(urls, 4, batches=6))) == 6  # a full pool of 4, then a pool of 2


def test_bucket_batches_is_checked_and_used_only_without_padding():
    with pytest.raises(ConfigError, match="data.bucket_batches"):
        load_config(ExperimentConfig, DEMO, ["data.bucket_batches=-1"])
    assert load_config(ExperimentConfig, DEMO, ["data.pad_mode=none"]).data.bucket_batches == 0  # opt-in
    assert load_config(ExperimentConfig, DEMO, ["data.bucket_batches=8"]).data.bucket_batches == 8


def test_one_batch_per_pool_is_the_unbucketed_stream(urls):
    plain, single = list(stream(urls, 0)), list(stream(urls, 1))
    assert keys(single) == keys(plain)
    assert all(torch.equal(a["audio"], b["audio"]) and a["stream"] == b["stream"] for a, b in zip(single, plain))
    assert "pool" not in plain[0]["stream"]  # today's two-number resume point


def total_skips(batches) -> Counter:
    return sum((Counter(b["skipped"]) for b in batches), Counter())


@pytest.fixture(scope="module")
def urls_with_bad(tmp_path_factory, urls) -> list[str]:
    bad = [member for members in bad_members().values() for member in members]
    return [*urls, str(write_tar(tmp_path_factory.mktemp("bad") / "z-bad.tar", bad))]


@pytest.mark.parametrize("consumed", [1, 5])  # inside the first pool, inside the second
def test_skips_are_counted_once_across_pools_and_a_resume(urls_with_bad, consumed):
    plain, full = list(stream(urls_with_bad, 0)), list(stream(urls_with_bad, 4))
    assert total_skips(full) == total_skips(plain) and sum(total_skips(full).values()) > 0  # the same positions
    where = full[consumed - 1]["stream"]
    resumed = list(stream(urls_with_bad, 4, resume={"epoch": 0, "workers": [[where["batches"], where["position"],
                                                                             where["pool"]]]}))
    assert total_skips(full[:consumed]) + total_skips(resumed) == total_skips(full)


def test_a_pool_holds_only_its_clips_real_samples(urls, monkeypatch):
    pools = []
    decode_pool = ClapStream._decode_pool
    monkeypatch.setattr(ClapStream, "_decode_pool", lambda self, *a: pools.append(decode_pool(self, *a)) or pools[-1])
    batches = list(stream(urls, 4))
    assert len(pools) == 2
    held = [s for _, _, samples in pools for s in samples]
    assert [s["audio"].numel() for s in held] == [s["length"] for s in held]  # not rows of CLIP samples
    assert sum(s["length"] for s in held) < 0.8 * len(held) * CLIP  # clips of 0.1-1.0 s
    assert sum(len(b["key"]) for b in batches) == len(held)


def test_logmel_buckets_keep_the_features_and_pad_with_silence(tmp_path):
    rng = np.random.default_rng(1)
    members, features = [], {}
    for i in range(24):
        key = f"f-{i}"
        features[key] = rng.standard_normal((int(rng.integers(3, 20)), 8)).astype(np.float16)
        buffer = io.BytesIO()
        np.save(buffer, features[key])
        members += [(f"{key}.{LOGMEL_EXT}", buffer.getvalue()), (f"{key}.json", meta_json(key))]
    url = str(write_tar(tmp_path / "mel-000000.tar", members))
    decoder = LogMelDecoder(frames=20, n_mels=8, pad_mode="none", is_train=True)
    batches = list(ClapStream([[url]], decoder, Collate(FakeTokenizer()), 4, is_train=True, seed=0,
                              shuffle_buffer=10, batches_per_worker=4, bucket_batches=4))
    assert len(batches) == 4
    for batch in batches:
        for key, row, length in zip(batch["key"], batch["logmel"], batch["logmel_length"]):
            assert length == len(features[key])
            assert torch.equal(row[:length], torch.from_numpy(features[key].astype(np.float32)))
            assert bool((row[length:] == SILENCE_DB).all())
