"""Shard fuzzing through the real loader, in-process: damaged shards from a fixed seed.

For every case, reading the shard through `ClapStream` + `ClapLoader` (the path of training,
validate/test, `eval` and fine-tuning) must either finish with every sample decoded right or
counted by reason, or stop with the one-line "no valid sample" DataError: never another
exception, a hang (pytest-timeout), a wrong caption, or a sample lost without a count.
How each family is judged:
- exact (json fields, audio formats, member structure, empty shards): every sample's outcome
  and every count is known in advance;
- truncated tars: exactly the samples whose members lie wholly before the cut are decoded,
  and a cut before the end-of-archive block is counted;
- bit flips: decoded samples keep their captions unless a flip is in their json, and a
  sample missing from the output is counted;
- gzip corruption: as bit flips, and any altered caption is counted (gzip's CRC).
A subset also runs in training mode, mixed with a good shard.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from clap_lightning.data.pipeline import ClapLoader, ClapStream, ClipDecoder, Collate
from clap_lightning.errors import DataError
from tests.fuzz.shard_cases import CLIP, MODEL_RATE, ShardCase, all_cases
from tests.shard_factory import write_good_shards
from tests.unit.test_loader import FakeTokenizer

SEED = 20261203
CASES = all_cases(SEED)
REASONS = {"missing_json", "bad_json", "empty_text", "missing_audio", "bad_audio", "empty_audio", "nan_audio",
           "bad_tar", "unreadable_shard", "empty_shard"}
# One decoder for every case, as a loader worker has: its resampler keeps each rate's kernel.
EVAL_DECODER = ClipDecoder(MODEL_RATE, CLIP, "zero", is_train=False)
TRAIN_DECODER = ClipDecoder(MODEL_RATE, CLIP, "zero", is_train=True)

pytestmark = pytest.mark.timeout(60)


class KeepTexts(Collate):
    """The loader's collate (tokenizing, labels) plus every caption and the clip lengths, to check them."""

    def __call__(self, samples):
        batch = super().__call__(samples)
        batch["texts"] = [s["texts"] for s in samples]
        batch["length"] = [s["length"] for s in samples]
        return batch


COLLATE = KeepTexts(FakeTokenizer())


def read_shard(case: ShardCase, directory: Path) -> tuple[list[tuple[str, list[str], int]], Counter]:
    """(key, texts, length) of every decoded sample, and the skip counts, read as evaluation reads."""
    path = directory / f"shard{case.suffix}"
    path.write_bytes(case.data)
    stream = ClapStream([[str(path)]], EVAL_DECODER, COLLATE, 1 + len(case.name) % 3, is_train=False, name="fuzz")
    try:
        batches = list(ClapLoader(stream, batch_size=None, num_workers=0))
    except DataError as err:  # nothing valid: one line, with the counts
        message = str(err)
        assert "\n" not in message and message.startswith("no valid sample in fuzz"), message
        return [], Counter({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", message)})
    decoded, skipped = [], Counter()
    for batch in batches:
        assert batch["audio"].shape == (len(batch["key"]), CLIP) and torch.isfinite(batch["audio"]).all()
        assert batch["input_ids"].shape[0] == len(batch["key"]) == len(batch["labels"])
        decoded += list(zip(batch["key"], batch["texts"], batch["length"]))
        skipped.update(batch["skipped"])
    return decoded, skipped


def covered(offsets, spans) -> bool:
    return any(start <= offset < end for offset in offsets for start, end in spans)


def judge(case: ShardCase, decoded: list, skipped: Counter) -> None:
    assert set(skipped) <= REASONS, skipped
    original = {s.key: s for s in case.samples}
    keys = [key for key, _, _ in decoded]
    if case.check == "exact":
        want = [s for s in case.samples if s.captions is not None]
        assert keys == [s.key for s in want]
        for (key, texts, length), sample in zip(decoded, want):
            assert texts == sample.captions, key
            assert sample.length is None or length == sample.length, (key, length, sample.length)
        reasons = Counter(s.reason for s in case.samples if s.captions is None) + Counter(case.shard_reasons)
        assert skipped == reasons
        return
    order = [s.key for s in case.samples]
    assert keys == [k for k in order if k in set(keys)] and len(set(keys)) == len(keys)  # in order, none twice
    lost = len(case.samples) - len(keys)
    if case.check == "truncated":
        whole = [k for k in order if all(end <= case.damage for _, end in case.layout[k])]
        assert keys == whole, (case.damage, case.layout)
        for key, texts, length in decoded:
            assert texts == original[key].captions and length == original[key].length
        if case.damage < case.end + 512:  # the archive is incomplete: that must show in the counts
            assert sum(skipped.values()) >= 1
    elif case.check == "flipped":
        for key, texts, _ in decoded:
            json_span = [case.layout[key][-1]]  # members are written audio first, json last
            assert texts == original[key].captions or covered(case.damage, json_span), (key, texts)
    elif case.check == "gzip":
        altered = [key for key, texts, _ in decoded if texts != original[key].captions]
        if altered:
            assert skipped["bad_tar"] >= 1, altered
    if lost:
        assert sum(skipped.values()) >= 1, f"{lost} sample(s) lost without a count"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_damaged_shard_is_read_right_or_counted(case, tmp_path):
    decoded, skipped = read_shard(case, tmp_path)
    judge(case, decoded, skipped)


TRAIN_CASES = CASES[::8]


@pytest.fixture(scope="module")
def good_shard(tmp_path_factory) -> str:
    return write_good_shards(tmp_path_factory.mktemp("good"), "good", 1, 4)[0]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c.name for c in TRAIN_CASES])
def test_training_goes_on_past_a_damaged_shard(case, tmp_path, good_shard):
    path = tmp_path / f"shard{case.suffix}"
    path.write_bytes(case.data)
    stream = ClapStream([[str(path), good_shard]], TRAIN_DECODER, COLLATE, 2, is_train=True, batches_per_worker=3,
                        seed=len(case.name), shuffle_buffer=3, name="fuzz")
    batches = list(stream)
    assert len(batches) == 3
    original = {s.key: s for s in case.samples}
    for batch in batches:
        assert set(batch["skipped"]) <= REASONS and torch.isfinite(batch["audio"]).all()
        for key, texts, caption in zip(batch["key"], batch["texts"], batch["captions"]):
            assert key.startswith("good-") or key in original
            assert caption in texts
            if key.startswith("good-"):
                assert texts == ["a tone"]
            elif case.check == "exact":
                assert texts == original[key].captions


def test_the_fuzz_suite_is_as_large_as_it_says():
    """The count the README states; the families it covers."""
    assert len(CASES) + len(TRAIN_CASES) >= 450
    families = Counter(c.name.split("-")[0] for c in CASES)
    assert set(families) == {"json", "rawjson", "audio", "structure", "shard", "truncate", "flip", "gzip"}
    assert min(families.values()) >= 7
