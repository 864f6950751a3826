"""One shard reader: training, validate/test, the eval suite, fine-tuning and the tokenizer
trainer read shards the same way and count the same damage by the same reasons."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clap_lightning.data.pipeline import ClapLoader
from clap_lightning.encoders.tokenizer import iter_shard_captions
from clap_lightning.eval.embed import ClipSettings
from clap_lightning.eval.suite import TaskEvaluator
from clap_lightning.eval.tasks import TaskSpec
from clap_lightning.lit.finetune import FineTuneConfig, FoldFilter, build_labelled_loader
from tests.shard_factory import (corrupt_gzip, encode, good_members, meta_json, tone, truncated_tar, write_good_shards,
                                 write_tar)
from tests.unit.test_loader import CLIP, keys_of, make_stream

PACKAGE = Path(__file__).resolve().parents[2] / "clap_lightning"
GOOD = ["good-0-0", "good-0-1", "good-0-2", "kept-0", "kept-1"]
DAMAGE = {"bad_tar": 2, "empty_shard": 1, "bad_json": 1}  # cut tar + corrupt gzip, empty tar, one bad json


def damaged_split(directory: Path) -> list[str]:
    """A split of one good shard and one of each kind of damage (`DAMAGE`); the good keys are `GOOD`."""
    directory.mkdir(parents=True)
    good = write_good_shards(directory, "good", 1, 3)
    cut = truncated_tar(directory / "cut-000000.tar", ["kept-0", "kept-1", "lost-2"])
    gz = directory / "gz-000000.tar.gz"
    gz.write_bytes(corrupt_gzip(write_tar(directory / "gz.tmp", good_members("lost-3")).read_bytes()))
    (directory / "gz.tmp").unlink()
    empty = write_tar(directory / "empty-000000.tar", [])
    bad = write_tar(directory / "json-000000.tar", [("badjson.flac", encode(tone())), ("badjson.json", b"{not json")])
    return good + [str(cut), str(gz), str(empty), str(bad)]


class MeanEmbedder(nn.Module):
    """A stand-in audio model: a clip's embedding is a linear map of its mean."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(1, 4)

    def encode_audio(self, audio: torch.Tensor, audio_length: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(audio.mean(dim=1, keepdim=True))


def task_spec(**fields) -> TaskSpec:
    fields = {"kind": "single_label", "metric": "acc", "classes": ["tone"], **fields}
    return TaskSpec(name="t", display_name="T", source="test", split="split", protocol="", **fields)


def total_skipped(batches) -> Counter:
    return sum((Counter(b["skipped"]) for b in batches), Counter())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_shard_is_counted_the_same_in_training_validation_eval_and_finetuning(tmp_path, workers):
    urls = damaged_split(tmp_path / "test" / "split")
    # validate / test (the DataModule's evaluation stream)
    batches = list(ClapLoader(make_stream([urls], batch_size=2), batch_size=None, num_workers=workers))
    assert sorted(keys_of(batches)) == GOOD and total_skipped(batches) == DAMAGE
    # the `eval` suite and the validation callback
    clip = ClipSettings(sample_rate=16000, clip_samples=CLIP, pad_mode="zero")
    evaluator = TaskEvaluator(MeanEmbedder(), None, clip, tmp_path)
    evaluator.options.num_workers, evaluator.options.batch_size = workers, 2
    embedded = evaluator.embed("test", "split")
    assert sorted(embedded.keys) == GOOD and embedded.skipped == DAMAGE
    # fine-tuning's test loader
    spec = task_spec()
    config = FineTuneConfig(batch_size=2, num_workers=workers)
    batches = list(build_labelled_loader(urls, clip, spec, FoldFilter(None, None, True), config, is_train=False))
    assert sum(len(b["target"]) for b in batches) == len(GOOD) and total_skipped(batches) == DAMAGE
    # training: shards are resampled, so the counts grow, by the same reasons
    stream = make_stream([urls], batch_size=2, is_train=True, batches_per_worker=12)
    batches = list(stream)
    assert set(keys_of(batches)) <= set(GOOD) and set(total_skipped(batches)) == set(DAMAGE)


def test_the_eval_command_reports_what_it_left_out(tmp_path, capsys, monkeypatch):
    import argparse

    import clap_lightning.commands.eval as eval_cli
    from clap_lightning.eval.suite import TaskResult

    damaged_split(tmp_path / "test" / "split")
    clip = ClipSettings(sample_rate=16000, clip_samples=CLIP, pad_mode="zero")
    evaluator = TaskEvaluator(MeanEmbedder(), None, clip, tmp_path)
    spec = task_spec()

    def scored_by_the_suite(*args, **kwargs):  # run_eval without a checkpoint: the suite's own embedding
        embedded = evaluator.embed("test", "split")
        return [TaskResult(spec, {"acc": 0.5}, len(embedded.keys), left_out=embedded.skipped)], [], evaluator

    monkeypatch.setattr(eval_cli, "run_eval", scored_by_the_suite)
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)  # the command's own options, defaults included
    eval_cli.run(
        parser.parse_args(["--checkpoint", "x", "--tasks", "t", "--data", str(tmp_path), "--num-workers", "0"])
    )
    assert "t: acc 0.5000 (left out: bad_json=1, bad_tar=2, empty_shard=1)" in capsys.readouterr().out


def test_the_tokenizer_trainer_reads_captions_like_the_loader(tmp_path):
    members = good_members("a") + [("b.flac", encode(tone())), ("b.json", meta_json("b", text="a dog barks")),
                                   ("c.flac", encode(tone())), ("c.json", b"{broken")]
    url = write_tar(tmp_path / "s-000000.tar", members)
    cut = truncated_tar(tmp_path / "s-000001.tar", ["d", "e"])
    assert list(iter_shard_captions(f"{url}::{cut}")) == ["a tone", "a dog barks", "a tone"]


def test_no_module_reads_shards_around_the_project_reader():
    """webdataset's pipeline (tarfile_to_samples, warn_and_continue) counted nothing and split ranks its own way."""
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if "tarfile_to_samples" in p.read_text() or "import webdataset" in p.read_text()]
    assert users == ["data/stream.py"]  # the tar reader opens URLs (files, pipes) with webdataset's gopen


def test_finetuning_crops_differ_between_same_length_clips():
    """The decoder used to seed a fallback generator from torch.initial_seed() + skips, so every
    same-length clip of a fine-tuning worker got the same crop."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ramp = (np.arange(16000) / 16000 * 0.9).astype(np.float32)  # a crop's first value tells its offset
        members = []
        for i in range(8):
            members += [(f"r-{i}.flac", encode(ramp, rate=16000)), (f"r-{i}.json", meta_json(f"r-{i}", rate=16000))]
        url = str(write_tar(Path(tmp) / "ramps-000000.tar", members))
        clip = ClipSettings(sample_rate=16000, clip_samples=2000, pad_mode="zero")
        spec = task_spec()
        config = FineTuneConfig(batch_size=8, num_workers=1, shuffle_buffer=4)
        loader = build_labelled_loader([url], clip, spec, FoldFilter(None, None, True), config, is_train=True)
        (batch,) = list(loader)
    starts = {round(float(row[0]) * 16000 / 0.9) for row in batch["audio"]}
    assert len(starts) > 4, starts  # 8 draws from 14,001 offsets
    assert batch["audio"].shape == (8, 2000)


def test_a_training_decoder_without_a_generator_is_an_error():
    from clap_lightning.data.pipeline import ClipDecoder

    decoder = ClipDecoder(sample_rate=16000, clip_samples=2000, pad_mode="zero", is_train=True)
    sample = {"__key__": "k", "flac": encode(tone(rate=16000), rate=16000), "json": meta_json("k")}
    with pytest.raises(ValueError, match="needs a generator"):
        decoder(sample)
    assert decoder(sample, np.random.default_rng(0))["audio"].shape == (2000,)


def test_finetuning_epochs_are_shuffled_differently_and_partition_the_clips(tmp_path):
    urls = write_good_shards(tmp_path, "f", n_shards=4, per_shard=5)
    clip = ClipSettings(sample_rate=16000, clip_samples=CLIP, pad_mode="zero")
    spec = task_spec()
    stream = build_labelled_loader(urls, clip, spec, FoldFilter(None, None, True),
                                   FineTuneConfig(batch_size=5, num_workers=0, shuffle_buffer=6), True).dataset
    stream.collate = lambda samples: {"key": [s["key"] for s in samples]}
    first, second = keys_of(stream), keys_of(stream)
    assert len(first) == len(set(first)) == 20 and sorted(first) == sorted(second) and first != second
    stream.num_workers = 2  # two workers' shares are a partition of the epoch
    from unittest import mock

    shares = []
    for worker in range(2):
        stream.epoch = 0
        with mock.patch("clap_lightning.data.pipeline.get_worker_info",
                        return_value=mock.Mock(id=worker, num_workers=2)):
            shares.append(keys_of(stream))
    assert sorted(shares[0] + shares[1]) == sorted(first) and not set(shares[0]) & set(shares[1])
