"""The shard writer: round trip, crash recovery, skipped items, --part + merge."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from clap_lightning.data import schema
from data_recipes import writer
from data_recipes.base import Recipe, Sample, SkipSample


@dataclasses.dataclass
class ToyConfig:
    n_items: int = 10  # clips in the split
    rate: int = 8000  # sample rate the toy clips come at
    channels: int = 0  # 0: mono [T]; >0: [C, T]
    none_item: int = -1  # load() returns None
    nan_item: int = -1  # audio holds a NaN
    raise_item: int = -1  # load() raises RuntimeError
    empty_text_item: int = -1  # json text is []
    skip_item: int = -1  # load() raises SkipSample("too_short")
    dup_item: int = -1  # this item and the next get ids that map to the same key
    crash_item: int = -1  # the worker process exits here while `crash_marker` exists
    crash_marker: str = ""  # path of the file that arms the crash
    delay: float = 0.0  # seconds per item, to give a crash time to overlap other shards


class ToyRecipe(Recipe):
    """Toy corpus: random clips of 0.1-0.2 s with two captions each."""

    name = "toy"
    version = "1"
    splits = ("train",)
    needs_src = False
    config_cls = ToyConfig

    def items(self, src, split):
        return list(range(self.config.n_items))

    def load(self, item, sample_rate):
        cfg = self.config
        time.sleep(cfg.delay)
        if item == cfg.crash_item and os.path.exists(cfg.crash_marker):
            os._exit(3)  # a killed worker: no exception, no cleanup
        if item == cfg.none_item:
            return None
        if item == cfg.raise_item:
            raise RuntimeError("corrupt file")
        if item == cfg.skip_item:
            raise SkipSample("too_short", "0.01 s")
        rng = np.random.default_rng(item)
        shape = (cfg.channels, 800 + 10 * item) if cfg.channels else (800 + 10 * item,)
        audio = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
        if item == cfg.nan_item:
            audio[..., 3] = np.nan
        text = [] if item == cfg.empty_text_item else [f"clip {item}", f"toy sound number {item}"]
        dups = {cfg.dup_item: "x.y", cfg.dup_item + 1: "x_y"} if cfg.dup_item >= 0 else {}
        stable_id = dups.get(item, f"clip{item:03d}")
        return Sample(stable_id, audio, cfg.rate, {"text": text, "labels": ["toy"], "value": item})


def build(out, recipe=None, **kwargs):
    config = writer.WriterConfig(**{"sample_rate": 8000, "samples_per_shard": 4, "show_progress": False, **kwargs})
    return writer.build_split(recipe or ToyRecipe(), "train", out, None, config)


def read_samples(directory: Path) -> list[dict]:
    urls = [str(p) for p in sorted(directory.glob("*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def shard_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.tar"))}


def test_round_trip(tmp_path):
    manifest = build(tmp_path)
    directory = schema.split_dir(tmp_path, "toy", "train")
    assert sorted(p.name for p in directory.glob("*.tar")) == [f"toy-train-00000{i}.tar" for i in range(3)]
    samples = read_samples(directory)
    assert [s["__key__"] for s in samples] == [f"toy-clip{i:03d}" for i in range(10)]
    for i, s in enumerate(samples):
        pcm, rate = sf.read(io.BytesIO(s["flac"]), dtype="int16")
        audio = ToyRecipe().load(i, 8000).audio
        assert rate == 8000 and pcm.ndim == 1
        np.testing.assert_array_equal(pcm, np.round(audio * 32767).astype(np.int16))
        meta = json.loads(s["json"].decode("utf-8"))
        assert schema.validate_sample_json(meta) == []
        assert meta["text"] == [f"clip {i}", f"toy sound number {i}"] and meta["value"] == i
        assert (meta["source"], meta["id"], meta["split"], meta["sample_rate"]) == (
            "toy",
            f"clip{i:03d}",
            "train",
            8000,
        )
        assert meta["duration"] == pytest.approx(len(audio) / 8000)
    # Members come as consecutive <key>.flac, <key>.json pairs.
    with tarfile.open(directory / "toy-train-000000.tar") as tar:
        assert tar.getnames() == [f"toy-clip{i:03d}.{ext}" for i in range(4) for ext in ("flac", "json")]
    sizes = json.loads((directory / "sizes.json").read_text())
    assert sizes == {"toy-train-000000.tar": 4, "toy-train-000001.tar": 4, "toy-train-000002.tar": 2}
    assert schema.read_manifest(directory) == manifest
    assert manifest["num_samples"] == 10 and manifest["skipped"] == {}
    assert manifest["hours"] == pytest.approx(sum(800 + 10 * i for i in range(10)) / 8000 / 3600, abs=1e-6)
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["recipe"] == {"name": "toy", "version": "1", "options": dataclasses.asdict(ToyConfig())}
    assert manifest["build"]["sample_rate"] == 8000 and manifest["build"]["planned_shards"] == 3
    assert [p.name for p in schema.manifest_shard_paths(directory)] == sorted(sizes)


def test_stereo_is_averaged_and_resampled(tmp_path):
    recipe = ToyRecipe(ToyConfig(n_items=2, channels=2))
    build(tmp_path, recipe, sample_rate=16000)
    samples = read_samples(schema.split_dir(tmp_path, "toy", "train"))
    for i, s in enumerate(samples):
        pcm, rate = sf.read(io.BytesIO(s["flac"]), dtype="int16")
        audio = recipe.load(i, 16000).audio
        expected, _ = writer.prepare_audio(audio.mean(axis=0), 8000, 16000)
        assert rate == 16000 and pcm.shape == (2 * audio.shape[1],)
        np.testing.assert_array_equal(pcm, expected)
        assert json.loads(s["json"])["sample_rate"] == 16000


def test_rerun_finishes_truncated_and_missing_shards(tmp_path):
    build(tmp_path)
    directory = schema.split_dir(tmp_path, "toy", "train")
    original = shard_files(directory)
    kept = directory / "toy-train-000000.tar"
    kept_mtime = kept.stat().st_mtime_ns
    (directory / "toy-train-000001.tar").unlink()  # never written
    partial = directory / "toy-train-000002.tar"
    partial.rename(partial.with_name(partial.name + ".tmp"))  # killed mid-write: half a tar under .tmp
    tmp = directory / "toy-train-000002.tar.tmp"
    tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])

    manifest = build(tmp_path)
    keys = [s["__key__"] for s in read_samples(directory)]
    assert keys == [f"toy-clip{i:03d}" for i in range(10)]  # the full set, no duplicates
    assert kept.stat().st_mtime_ns == kept_mtime  # complete shards are not rewritten
    assert shard_files(directory) == original  # rebuilt shards are byte-identical
    assert not list(directory.glob("*.tmp")) and manifest["num_samples"] == 10


def test_killed_worker_then_rerun(tmp_path):
    marker = tmp_path / "crash"
    marker.touch()
    recipe = ToyRecipe(ToyConfig(n_items=24, crash_item=19, crash_marker=str(marker), delay=0.03))
    out = tmp_path / "out"
    with pytest.raises(writer.WorkerDied, match="rerun"):
        build(out, recipe, workers=2)
    directory = schema.split_dir(out, "toy", "train")
    complete = {p: p.stat().st_mtime_ns for p in directory.glob("*.tar")}
    assert 0 < len(complete) < 6 and not (directory / "toy-train-000004.tar").exists()

    marker.unlink()
    manifest = build(out, recipe, workers=2)
    keys = [s["__key__"] for s in read_samples(directory)]
    assert keys == [f"toy-clip{i:03d}" for i in range(24)]
    assert {p: p.stat().st_mtime_ns for p in complete} == complete
    assert manifest["num_samples"] == 24 and len(manifest["shards"]) == 6
    assert not list(directory.glob("*.tmp"))


def test_rerun_of_a_killed_build_with_other_parameters_is_refused(tmp_path):
    """A kill leaves shards and no manifest; the record written before them still guards the directory."""
    marker = tmp_path / "crash"
    marker.touch()
    recipe = ToyRecipe(ToyConfig(n_items=24, crash_item=19, crash_marker=str(marker), delay=0.03))
    out = tmp_path / "out"
    with pytest.raises(writer.WorkerDied):
        build(out, recipe, workers=2)
    directory = schema.split_dir(out, "toy", "train")
    assert list(directory.glob("*.tar")) and not list(directory.glob("manifest*.json"))
    assert json.loads((directory / ".stats" / "build.json").read_text())["build"]["sample_rate"] == 8000
    marker.unlink()

    with pytest.raises(ValueError, match="other parameters") as refused:
        build(out, recipe, workers=2, sample_rate=16000, flac_level=0)
    message = str(refused.value)
    assert "\n" not in message and "sample_rate 8000 (now 16000)" in message and "flac_level 5 (now 0)" in message
    assert "samples_per_shard" not in message
    other_option = ToyRecipe(dataclasses.replace(recipe.config, rate=16000))
    with pytest.raises(ValueError, match="option rate 8000 \\(now 16000\\)"):
        build(out, other_option, workers=2)

    manifest = build(out, recipe, workers=2)  # the same parameters: resume
    assert [s["__key__"] for s in read_samples(directory)] == [f"toy-clip{i:03d}" for i in range(24)]
    assert manifest["num_samples"] == 24 and {
        json.loads(s["json"])["sample_rate"] for s in read_samples(directory)
    } == {8000}


def bad_recipe() -> ToyRecipe:
    return ToyRecipe(ToyConfig(n_items=16, none_item=1, nan_item=2, raise_item=5, empty_text_item=6,
                               skip_item=9, dup_item=12))


def test_bad_items_are_skipped_and_counted(tmp_path):
    manifest = build(tmp_path, bad_recipe())
    assert manifest["skipped"] == {"duplicate_key": 1, "empty_text": 1, "error_RuntimeError": 1,
                                   "no_sample": 1, "non_finite_audio": 1, "too_short": 1}
    assert manifest["num_samples"] == 10 and manifest["items"] == 16
    assert {e["reason"] for e in manifest["skipped_examples"]} == set(manifest["skipped"])
    keys = [s["__key__"] for s in read_samples(schema.split_dir(tmp_path, "toy", "train"))]
    assert len(keys) == len(set(keys)) == 10 and "toy-x_y" in keys


def test_parts_then_merge_equal_a_single_build(tmp_path):
    single = build(tmp_path / "single", bad_recipe(), samples_per_shard=3)
    build(tmp_path / "parts", bad_recipe(), samples_per_shard=3, part=(0, 2), workers=2)
    with pytest.raises(ValueError, match="manifest.part-1-of-2.json"):
        writer.merge_parts(tmp_path / "parts", "toy", "train")
    build(tmp_path / "parts", bad_recipe(), samples_per_shard=3, part=(1, 2))
    merged = writer.merge_parts(tmp_path / "parts", "toy", "train")

    a, b = (schema.split_dir(tmp_path / d, "toy", "train") for d in ("single", "parts"))
    assert shard_files(a) == shard_files(b) and len(shard_files(a)) == 6
    assert (a / "sizes.json").read_text() == (b / "sizes.json").read_text()
    ignore = lambda m: {**m, "created": None, "build": {**m["build"], "src": None}}  # noqa: E731
    assert ignore(merged) == ignore(single) == ignore(schema.read_manifest(b))


def test_rebuild_with_other_parameters_is_refused(tmp_path):
    build(tmp_path)
    with pytest.raises(ValueError, match="other parameters"):
        build(tmp_path, samples_per_shard=5)


def test_flac_level_changes_bytes_not_samples(tmp_path):
    """Levels are lossless; the level is recorded, and one directory holds one level."""
    fast, default = build(tmp_path / "fast", flac_level=0), build(tmp_path / "default")
    assert (fast["build"]["flac_level"], default["build"]["flac_level"]) == (0, 5)
    fast_dir, default_dir = (schema.split_dir(tmp_path / d, "toy", "train") for d in ("fast", "default"))
    assert shard_files(fast_dir) != shard_files(default_dir)
    for a, b in zip(read_samples(fast_dir), read_samples(default_dir)):
        assert a["__key__"] == b["__key__"] and a["json"] == b["json"]
        np.testing.assert_array_equal(sf.read(io.BytesIO(a["flac"]), dtype="int16")[0],
                                      sf.read(io.BytesIO(b["flac"]), dtype="int16")[0])
    with pytest.raises(ValueError, match="other parameters"):
        build(tmp_path / "default", flac_level=8)
    # A manifest from before the option (no flac_level) was level 5: a rerun reuses its shards.
    manifest_path = default_dir / "manifest.json"
    old = json.loads(manifest_path.read_text())
    del old["build"]["flac_level"]
    manifest_path.write_text(json.dumps(old))
    before = shard_files(default_dir)
    assert build(tmp_path / "default")["num_samples"] == 10 and shard_files(default_dir) == before
    with pytest.raises(ValueError, match="integer 0-8, got 9"):
        writer.WriterConfig(flac_level=9)


def test_plan_shards_by_count_and_estimated_bytes():
    assert writer.plan_shards(10, 4) == [(0, 4), (4, 8), (8, 10)]
    estimates = [30, 30, 30, 100, 10, 10, 10, 10, 10]
    plan = writer.plan_shards(len(estimates), 4, max_shard_bytes=70, estimates=estimates)
    assert plan == [(0, 2), (2, 3), (3, 4), (4, 8), (8, 9)]  # an item above the limit gets a shard alone
    assert plan == writer.plan_shards(len(estimates), 4, max_shard_bytes=70, estimates=estimates)


def test_input_errors_are_one_line():
    class NeedsSrc(ToyRecipe):
        needs_src = True

    with pytest.raises(ValueError, match="needs --src"):
        writer.build_corpus(NeedsSrc(), "/tmp/unused", None, None, writer.WriterConfig())
    with pytest.raises(FileNotFoundError, match="not a directory"):
        writer.build_corpus(NeedsSrc(), "/tmp/unused", "/nonexistent/corpus", None, writer.WriterConfig())
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        writer.build_corpus(ToyRecipe(), "/tmp/unused", None, ["dev"], writer.WriterConfig())
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="expected i/n"):
            writer.parse_part(bad)
    assert writer.parse_part("1/4") == (1, 4) and writer.parse_size("512M") == 512 * 2**20


def test_sample_keys_have_no_dots_or_slashes():
    assert schema.sample_key("clotho", "a b.c/d.wav") == "clotho-a_b_c_d_wav"
    assert schema.shard_path("/o", "demo", "test", 12) == Path("/o/demo/test/demo-test-000012.tar")
    assert schema.validate_sample_json({"text": [], "source": "x"}) != []
