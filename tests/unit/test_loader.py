"""ClapStream / ClapLoader: exactly-once evaluation, weighted mixing, bad samples, empty datasets."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from clap_lightning.data.pipeline import ClapLoader, ClapStream, ClipDecoder, Collate
from clap_lightning.data.stream import FailureGuard, mixed_stream, read_tar_samples
from clap_lightning.errors import DataError
from tests.shard_factory import (bad_members, encode, good_members, meta_json, tone, truncated_tar,
                                 write_good_shards, write_tar)

CLIP = 2000  # samples per clip at the model rate (8 kHz shards -> 16 kHz model rate: resampled)


class FakeTokenizer:
    """Picklable stand-in: one token per word, padded per batch."""

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        lengths = [len(c.split()) for c in captions]
        ids = torch.zeros(len(captions), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths):
            ids[row, :n], mask[row, :n] = 1, 1
        return {"input_ids": ids, "attention_mask": mask}


def make_stream(sources, batch_size=4, is_train=False, **kwargs) -> ClapStream:
    decoder = ClipDecoder(sample_rate=16000, clip_samples=CLIP, pad_mode="zero", is_train=is_train)
    return ClapStream(sources, decoder, Collate(FakeTokenizer()), batch_size, is_train=is_train, **kwargs)


def keys_of(batches) -> list[str]:
    return [key for batch in batches for key in batch.get("key", [])]  # a pass may end with a skip tally


def test_eval_reads_every_sample_exactly_once_over_2_ranks_x_2_workers(tmp_path):
    # 5 shards of unequal size over 2 ranks x 2 real worker processes: rank r takes shards r::2,
    # worker w of it shards w::2 of those.
    urls = write_good_shards(tmp_path, "a", n_shards=5, per_shard=3)
    urls.append(str(write_tar(tmp_path / "b-000000.tar", [m for i in range(4) for m in good_members(f"b-{i}")])))
    expected = [f"a-{s}-{i}" for s in range(5) for i in range(3)] + [f"b-{i}" for i in range(4)]
    seen = []
    for rank in range(2):
        stream = make_stream([urls], batch_size=2, rank=rank, world_size=2)
        seen += keys_of(ClapLoader(stream, batch_size=None, num_workers=2))
    assert sorted(seen) == sorted(expected)  # none missing, none twice


def test_fewer_shards_than_ranks_still_gives_every_rank_samples_exactly_once(tmp_path):
    # One validation shard on 2 ranks: splitting whole shards would leave rank 1 idle and hang DDP.
    urls = write_good_shards(tmp_path, "a", n_shards=1, per_shard=7)
    per_rank = [keys_of(ClapLoader(make_stream([urls], batch_size=2, rank=rank, world_size=2),
                                   batch_size=None, num_workers=2)) for rank in range(2)]
    assert all(per_rank) and not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(f"a-0-{i}" for i in range(7))


@pytest.mark.parametrize("workers", [0, 1])
def test_each_clip_lands_in_its_own_batch_row_around_skipped_samples(tmp_path, workers):
    """Clips are decoded straight into the batch (shared memory in a worker): a skipped sample's
    row is reused, and every row holds the clip its key decodes to alone."""
    members = []
    for i in range(5):
        members += [(f"k-{i}.flac", encode(tone(freq=200.0 + 150 * i))), (f"k-{i}.json", meta_json(f"k-{i}"))]
        if i in (1, 3):
            members += bad_members()["bad_audio"]  # corrupt and truncated FLAC between good clips
    url = str(write_tar(tmp_path / "mixed.tar", members))
    decoder = ClipDecoder(sample_rate=16000, clip_samples=CLIP, pad_mode="zero", is_train=False)
    alone = {s["__key__"]: decoder(s) for s in read_tar_samples(url, Counter())}
    batches = list(ClapLoader(make_stream([[url]], batch_size=2), batch_size=None, num_workers=workers))
    assert [b["key"] for b in batches] == [["k-0", "k-1"], ["k-2", "k-3"], ["k-4"]]
    assert sum(sum(b["skipped"].values()) for b in batches) == 4
    for batch in batches:
        assert batch["audio"].shape == (len(batch["key"]), CLIP) and batch["audio"].is_shared() == (workers > 0)
        for key, row in zip(batch["key"], batch["audio"]):
            torch.testing.assert_close(row, alone[key]["audio"], atol=1e-6, rtol=0)
    assert len({float(b["audio"][0].abs().sum()) for b in batches}) == 3  # distinct clips, not one row repeated


def test_weighted_mixing_matches_the_configured_proportions(tmp_path):
    sources = [write_good_shards(tmp_path / "a", "a", 2, 5), write_good_shards(tmp_path / "b", "b", 3, 5),
               write_good_shards(tmp_path / "c", "c", 1, 5)]
    weights = [0.6, 0.3, 0.1]
    draws = 3000
    stream = mixed_stream(sources, weights, (0, 0, 0, 0), 0, Counter(), FailureGuard("test"))
    counts = Counter(next(stream)[1]["__source__"] for _ in range(draws))
    for index, weight in enumerate(weights):
        # Each draw picks source i with probability w_i: a binomial count; allow 4 standard deviations.
        tolerance = 4 * math.sqrt(draws * weight * (1 - weight))
        assert abs(counts[index] - draws * weight) <= tolerance, (index, counts)
    # The same through the full training stream (shuffle buffer, decode, batches): every source is used,
    # and a stream is a pure function of its seed.
    first = make_stream(sources, batch_size=8, is_train=True, weights=weights, shuffle_buffer=10,
                        batches_per_worker=20)
    batches = list(first)
    assert len(batches) == 20 and all(len(b["key"]) == 8 for b in batches)
    assert set(i for b in batches for i in b["source_index"]) == {0, 1, 2}
    again = make_stream(sources, batch_size=8, is_train=True, weights=weights, shuffle_buffer=10,
                        batches_per_worker=20)
    assert keys_of(again) == keys_of(batches)
    assert torch.equal(torch.cat([b["audio"] for b in batches]), torch.cat([b["audio"] for b in make_stream(
        sources, batch_size=8, is_train=True, weights=weights, shuffle_buffer=10, batches_per_worker=20)]))


def bad_dataset(tmp_path: Path) -> tuple[list[str], list[str]]:
    """Shards holding every kind of bad input next to good samples; returns (urls, good keys)."""
    members = good_members("good-0")
    for kind in bad_members().values():
        members += kind
    members += good_members("good-1")
    urls = [str(write_tar(tmp_path / "mixed.tar", members)),
            str(truncated_tar(tmp_path / "cut.tar", ["good-2", "good-3", "lost-4"])),
            str(tmp_path / "missing.tar"),  # cannot be opened
            str(tmp_path / "not-a-tar.tar")]
    Path(urls[-1]).write_bytes(b"this is not a tar file")
    return urls, ["good-0", "good-1", "good-2", "good-3"]


EXPECTED_SKIPS = {"bad_audio": 2, "missing_json": 1, "bad_json": 1, "empty_text": 1, "empty_audio": 1,
                  "nan_audio": 1, "bad_tar": 1, "unreadable_shard": 2}


def test_every_kind_of_bad_input_is_skipped_and_counted(tmp_path):
    urls, good = bad_dataset(tmp_path)
    batches = list(make_stream([urls], batch_size=3))
    assert sorted(keys_of(batches)) == good
    totals = Counter()
    for batch in batches:
        totals.update(batch["skipped"])
    assert dict(totals) == EXPECTED_SKIPS
    # Training: the resampled stream keeps going past every bad input; batches carry the increments.
    stream = make_stream([urls], batch_size=3, is_train=True, batches_per_worker=6)
    batches = list(stream)
    assert len(batches) == 6 and set(keys_of(batches)) <= set(good)
    totals = Counter()
    for batch in batches:
        totals.update(batch["skipped"])
    assert set(totals) <= set(EXPECTED_SKIPS) and totals["nan_audio"] >= 1 and totals["unreadable_shard"] >= 1
    assert totals == stream.decoder.skipped - Counter()  # nothing counted twice or lost (one process)


def test_a_truncated_tar_keeps_the_samples_before_the_damage(tmp_path):
    skipped = Counter()
    keys = [s["__key__"] for s in read_tar_samples(str(truncated_tar(tmp_path / "t.tar", ["k0", "k1", "k2"])), skipped)]
    assert keys == ["k0", "k1"] and skipped == {"bad_tar": 1}


@pytest.mark.parametrize("is_train, workers", [(False, 0), (False, 2), (True, 1)])
def test_a_dataset_with_nothing_valid_is_a_data_error(tmp_path, is_train, workers):
    members = [m for kind in bad_members().values() for m in kind]
    urls = [str(write_tar(tmp_path / "bad.tar", members)), str(tmp_path / "missing.tar")]
    stream = make_stream([urls], is_train=is_train, batches_per_worker=2, num_workers=workers, name="bad shards")
    loader = ClapLoader(stream, batch_size=None, num_workers=workers, persistent_workers=is_train and workers > 0)
    with pytest.raises(DataError) as err:
        list(loader)
    message = str(err.value)
    assert "\n" not in message and message.startswith("no valid sample in")
    assert "bad shards" in message


def test_resumed_training_stream_skips_what_was_consumed(tmp_path):
    urls = write_good_shards(tmp_path, "a", 3, 6)
    full = list(make_stream([urls], batch_size=4, is_train=True, shuffle_buffer=5, batches_per_worker=6))
    where = full[2]["stream"]
    assert where == {"epoch": 0, "worker": 0, "batches": 3, "position": where["position"]}
    resumed = list(make_stream([urls], batch_size=4, is_train=True, shuffle_buffer=5, batches_per_worker=6,
                               resume={"epoch": 0, "workers": [[3, where["position"]]]}))
    assert len(resumed) == 3 and keys_of(resumed) == keys_of(full[3:])
    assert torch.equal(torch.cat([b["audio"] for b in resumed]), torch.cat([b["audio"] for b in full[3:]]))
    # Each iter() is the next epoch, with a different stream; the resume applies only to its epoch.
    stream = make_stream([urls], batch_size=4, is_train=True, shuffle_buffer=5, batches_per_worker=6)
    epoch0, epoch1 = list(stream), list(stream)
    assert keys_of(epoch0) == keys_of(full) and keys_of(epoch1) != keys_of(full)
    assert {b["stream"]["epoch"] for b in epoch1} == {1}


def test_weighted_sources_config():
    from clap_lightning.config import ExperimentConfig, load_config
    from clap_lightning.errors import ConfigError

    config = load_config(ExperimentConfig, None, ["data.train_sources=[{shards: a, weight: 0.7}, {shards: b}]"])
    assert [(s.shards, s.weight) for s in config.data.training_sources()] == [("a", 0.7), ("b", 1.0)]
    assert [
        (s.shards, s.weight) for s in load_config(ExperimentConfig, None, ["data.train=x"]).data.training_sources()
    ] == [("x", 1.0)]
    with pytest.raises(ConfigError, match="either data.train or data.train_sources"):
        load_config(ExperimentConfig, None, ["data.train=x", "data.train_sources=[{shards: a}]"])
    with pytest.raises(ConfigError, match=r"train_sources\[0\].weight must be > 0"):
        load_config(ExperimentConfig, None, ["data.train_sources=[{shards: a, weight: 0}]"])


def collate_sample(caption: str, meta: dict) -> dict:
    return {"audio": torch.zeros(CLIP), "length": CLIP, "texts": [caption], "caption": caption, "key": caption,
            "meta": meta}


def test_collate_gives_each_pair_a_caption_key_and_a_label_set_key():
    samples = [collate_sample("a dog barks", {"labels": ["dog", "bark"]}),
               collate_sample("barking", {"labels": ["bark", "dog"]}),  # same set, other order and caption
               collate_sample("a dog barks", {}),  # no labels: matched on the caption only
               collate_sample("rain", {}),
               collate_sample("rain", {"labels": "weather"})]  # a scalar label field is one label
    batch = Collate(FakeTokenizer())(samples)
    groups = batch["group_ids"]
    assert groups.dtype == torch.int64 and groups.shape == (5, 2)
    caption_key, labels_key = groups[:, 0].tolist(), groups[:, 1].tolist()
    assert labels_key[0] == labels_key[1] and caption_key[0] != caption_key[1]
    assert caption_key[0] == caption_key[2] == labels_key[2] and labels_key[2] != labels_key[0]
    assert caption_key[3] == caption_key[4] and labels_key[3] != labels_key[4]
    assert batch["labels"][4] == ["weather"]
    # stable across processes and runs (Python's hash() is salted per process; this key is not)
    assert groups[2].tolist() == [-7147811132704703568, -7147811132704703568]


def test_collate_cuts_a_batch_to_its_longest_clip_without_a_copy():
    """data.pad_mode none: the batch is as long as its longest clip, a view of the stacked rows."""
    samples = [dict(collate_sample(f"clip {n}", {}), audio=torch.arange(CLIP, dtype=torch.float32) * (n < CLIP),
                    length=n) for n in (700, 1200, 300)]
    full = Collate(FakeTokenizer())(samples)
    cut = Collate(FakeTokenizer(), cut_to_longest=True)(samples)
    assert full["audio"].shape == (3, CLIP) and cut["audio"].shape == (3, 1200)
    assert cut["audio_length"].tolist() == [700, 1200, 300]
    assert torch.equal(cut["audio"], full["audio"][:, :1200])
    assert cut["audio"].untyped_storage().nbytes() == 3 * CLIP * 4  # the stacked rows themselves
