"""The built-in demo corpus: determinism, classes, held-out combinations, captions, CLI."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from clap_lightning.data import schema
from data_recipes import writer
from data_recipes.base import build_recipe, recipe_names
from data_recipes.demo import ATTRIBUTE_VALUES, DEMO_CLASSES, DemoConfig, DemoRecipe, class_attributes

REPO = Path(__file__).resolve().parents[2]
TINY = {"train_per_class": 2, "valid_per_class": 1, "test_per_class": 1}


def build_tiny(out: Path, workers: int) -> dict:
    config = writer.WriterConfig(sample_rate=16000, samples_per_shard=8, workers=workers, show_progress=False)
    return writer.build_corpus(build_recipe("demo", TINY), out, None, None, config)


def test_two_builds_are_byte_identical(tmp_path):
    build_tiny(tmp_path / "a", workers=1)
    build_tiny(tmp_path / "b", workers=2)
    a = sorted((tmp_path / "a").rglob("*.tar"))
    assert len(a) == 8  # 28 train clips -> 4 shards of 8; 14 valid, 14 test -> 2 shards each
    for path in a:
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert path.read_bytes() == twin.read_bytes(), path.name
    recipe = DemoRecipe(DemoConfig(**TINY))
    item = recipe.items(None, "test")[5]
    first, second = recipe.load(item, 16000), recipe.load(item, 16000)
    np.testing.assert_array_equal(first.audio, second.audio)
    assert first.meta == second.meta


def test_shards_hold_every_class_with_the_contract_fields(tmp_path):
    manifests = build_tiny(tmp_path, workers=1)
    assert {s: m["num_samples"] for s, m in manifests.items()} == {"train": 28, "valid": 14, "test": 14}
    urls = [str(p) for p in schema.manifest_shard_paths(schema.split_dir(tmp_path, "demo", "train"))]
    metas = [json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert len(DEMO_CLASSES) >= 10 and len(set(DEMO_CLASSES)) == len(DEMO_CLASSES)
    assert collections.Counter(m["labels"][0] for m in metas) == {c: 2 for c in DEMO_CLASSES}
    for m in metas:
        assert schema.validate_sample_json(m) == [] and m["source"] == "demo" and m["sample_rate"] == 16000
        assert (
            DemoConfig.min_duration <= m["duration"] <= DemoConfig.max_duration
            and 2 <= len(m["text"]) <= 3
            and len(set(m["text"])) == len(m["text"])
        )
        assert all(m[a] in ATTRIBUTE_VALUES[a] for a in class_attributes(m["labels"][0]))


def test_clips_are_audible_and_loudness_follows_the_attribute():
    recipe = DemoRecipe(DemoConfig(train_per_class=4))
    peaks = collections.defaultdict(list)
    for item in recipe.items(None, "train"):
        sample = recipe.load(item, 16000)
        audio = sample.audio
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
        assert len(audio) == round(item.duration * 16000) and np.abs(audio).max() < 1.0
        peaks[dict(item.attributes)["loudness"]].append(np.abs(audio).max())
    assert min(peaks["quiet"]) > 0.1 and max(peaks["quiet"]) < 0.5 * min(peaks["loud"])


def combos(recipe: DemoRecipe, split: str) -> dict[str, set[tuple]]:
    out = collections.defaultdict(set)
    for item in recipe.items(None, split):
        out[item.label].add(item.attributes)
    return out


def test_held_out_combinations_never_occur_in_train():
    recipe = DemoRecipe()
    train, valid, test = (combos(recipe, s) for s in ("train", "valid", "test"))
    for label in DEMO_CLASSES:
        axes = ("loudness", "background") if "noise" in label else ("pitch", "background")
        pairs = {s: {(dict(a)[axes[0]], dict(a)[axes[1]]) for a in split[label]}
                 for s, split in (("train", train), ("valid", valid), ("test", test))}
        assert pairs["valid"] and pairs["test"]
        assert not pairs["valid"] & pairs["train"] and not pairs["test"] & pairs["train"], label
        assert not pairs["valid"] & pairs["test"], label
        # ...while every single attribute value still occurs in train for this class.
        for name in class_attributes(label):
            assert {dict(a)[name] for a in train[label]} == set(ATTRIBUTE_VALUES[name]), (label, name)


def test_default_sizes():
    recipe = DemoRecipe()
    sizes = {s: len(recipe.items(None, s)) for s in recipe.splits}
    n = len(DEMO_CLASSES)
    assert sizes == {"train": 600 * n, "valid": 25 * n, "test": 40 * n}


def test_captions_vary_and_often_name_the_class():
    recipe = DemoRecipe()
    items = recipe.items(None, "train")
    for label in DEMO_CLASSES:
        captions = [c for item in items if item.label == label for c in recipe.captions(item)]
        openings = {" ".join(c.split()[:2]) for c in captions}
        share = sum(label in c for c in captions) / len(captions)
        assert len(openings) >= 6, (label, openings)  # several templates
        assert 0.4 <= share <= 0.8, (label, share)  # the canonical name is common, not the only one
        assert len(set(captions)) >= 0.8 * len(captions)
    item = items[0]
    assert any(item.label in c for c in recipe.captions(item))  # the first caption names the class


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "data_recipes", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (("build", "clothoo", "--out", "o"), "unknown corpus 'clothoo'; known: audiocaps, audioset, clotho"),
    (("build", "demo", "--out", "o", "--part", "2/2"), "bad --part '2/2'"),
    (("build", "demo", "--out", "o", "-o", "train_per_clas=3"), "train_per_clas"),
    (("build", "demo", "--out", "o", "--split", "dev"), "unknown split 'dev'"),
    (("merge", "o", "demo", "train"), "no part manifests"),
    (("build", "demo"), "--out"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "o" / "demo" / "train" / "manifest.json").exists()


def test_cli_lists_and_builds(tmp_path):
    listing = run_cli("list", cwd=tmp_path)
    assert listing.returncode == 0 and "\ndemo " in listing.stdout and "demo" in recipe_names()
    result = run_cli("build", "demo", "--out", "shards", "--sample-rate", "16000", "--split", "valid",
                     "-o", "valid_per_class=2", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "demo/valid: 28 clips" in result.stdout
    manifest = schema.read_manifest(tmp_path / "shards" / "demo" / "valid")
    assert manifest["recipe"]["options"]["valid_per_class"] == 2 and manifest["build"]["samples_per_shard"] == 64
