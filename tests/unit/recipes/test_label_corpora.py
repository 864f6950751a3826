"""Recipes of label-only and crawled corpora (template captions), each on a miniature of its real layout."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from clap_lightning.eval.tasks import TASKS, order_discovered_classes
from clap_lightning.data.schema import read_labels
from clap_lightning.eval.zeroshot import build_targets
from data_recipes import cochlscene, epic_sounds, findsounds, fma, kinetics, nsynth

from .conftest import HAVE_FFMPEG, RATE


def _note(family: str, source: str, inst: int, pitch: int, velocity: int, qualities: list[str]) -> tuple[str, dict]:
    note_str = f"{family}_{source}_{inst:03d}-{pitch:03d}-{velocity:03d}"
    return note_str, {
        "note": 1,
        "note_str": note_str,
        "instrument": inst,
        "instrument_str": f"{family}_{source}_{inst:03d}",
        "pitch": pitch,
        "velocity": velocity,
        "sample_rate": 16000,
        "qualities": [0] * 10,
        "qualities_str": qualities,
        "instrument_family": 4,
        "instrument_family_str": family,
        "instrument_source": 1,
        "instrument_source_str": source,
    }


def test_nsynth_template_captions_from_fields(corpus):
    notes = dict([_note("keyboard", "electronic", 1, 60, 25, ["bright", "fast_decay"]),
                  _note("synth_lead", "synthetic", 7, 69, 127, [])])
    notes["broken-000-000"] = {"note_str": "broken-000-000"}  # no fields
    corpus.json("nsynth-valid/examples.json", notes)
    for key in notes:
        corpus.wav(f"nsynth-valid/audio/{key}.wav")
    manifest = corpus.build("nsynth", splits=["valid"])["valid"]
    samples = corpus.samples("nsynth", "valid")
    keyboard = samples["nsynth-keyboard_electronic_001-060-025"]
    assert keyboard["labels"] == ["keyboard", "electronic", "bright", "fast decay"]
    assert keyboard["pitch"] == 60 and keyboard["velocity"] == 25 and len(keyboard["text"]) == 2
    fields = dict(family="keyboard", source="electronic", pitch="C4", velocity="very soft",
                  qualities=" that sounds bright and fast decay")
    assert set(keyboard["text"]) <= {t.format(**fields) for t in nsynth.TEMPLATES}
    lead = samples["nsynth-synth_lead_synthetic_007-069-127"]
    assert all("synth lead" in t for t in lead["text"]) and not any("sounds" in t for t in lead["text"])
    assert nsynth.note_name(69) == "A4" and manifest["skipped"] == {"malformed_row": 1}
    assert keyboard["instrument_family"] == "keyboard" and keyboard["qualities"] == ["bright", "fast_decay"]
    assert lead["instrument_family"] == "synth_lead" and lead["qualities"] == []


def test_nsynth_shards_label_every_nsynth_zero_shot_task(corpus):
    notes = dict([_note("synth_lead", "synthetic", 7, 69, 127, ["nonlinear_env", "tempo-synced"]),
                  _note("keyboard", "electronic", 1, 60, 25, ["bright", "fast_decay"]),
                  _note("mallet", "acoustic", 3, 48, 75, [])])
    corpus.json("nsynth-test/examples.json", notes)
    for key in notes:
        corpus.wav(f"nsynth-test/audio/{key}.wav")
    corpus.build("nsynth", splits=["test"])
    samples = [s for _, s in sorted(corpus.samples("nsynth", "test").items())]
    tasks = [spec for name, spec in TASKS.items() if spec.source == "nsynth"]
    assert len(tasks) == 4
    for spec in tasks:
        labels = [read_labels(s, spec.label_field) for s in samples]
        found = (label for labs in labels for label in labs)
        classes = order_discovered_classes(found) if spec.classes_from == "shards" else spec.classes
        targets = build_targets(labels, classes, spec.is_multi_label)  # raises on unknown labels
        if not spec.is_multi_label:
            assert [classes[i] for i in targets] == [lab[0] for lab in labels] and all(labels), spec.name
        else:
            assert targets.sum().item() == 4, spec.name  # the two notes' four qualities


def _fma_metadata(corpus):
    corpus.csv("fma_metadata/tracks.csv", None, [
        ["", "album", "artist", "set", "set", "track", "track", "track", "track", "track"],
        ["", "title", "name", "split", "subset", "genre_top", "genres", "license", "tags", "title"],
        ["track_id", "", "", "", "", "", "", "", "", ""],
        [2, "AWOL - A Way Of Life", "AWOL", "training", "small", "Hip-Hop", "[21]", "CC BY-NC-SA", "['awol']", "Food"],
        [3, "", "", "validation", "medium", "", "[21, 76]", "CC BY", "[]", ""],
        [5, "Album", "Band", "test", "large", "Rock", "[]", "CC BY", "[]", "Song"],
        [10, "Album", "Band", "test", "large", "", "[]", "CC BY", "[]", "No genre"],
        ["notanid", "", "", "", "", "", "", "", "", ""]])
    corpus.csv("fma_metadata/genres.csv", ["genre_id", "#tracks", "parent", "title", "top_level"],
               [[21, 8389, 0, "Hip-Hop", 21], [76, 100, 21, "Experimental Pop", 10]])


def test_fma_two_level_header_subsets_and_mp3(corpus):
    _fma_metadata(corpus)
    for tid in ("000002", "000003", "000005", "000010"):
        corpus.wav(f"fma_large/000/{tid}.mp3", seconds=0.5, fmt="MP3", subtype="MPEG_LAYER_III")
    manifests = corpus.build("fma")
    train = corpus.samples("fma", "train")["fma-000002"]
    assert train["labels"] == ["Hip-Hop"] and train["title"] == "Food" and train["artist"] == "AWOL"
    assert set(train["text"]) <= {t.format(genres="Hip-Hop", title="Food", artist="AWOL") for t in fma.TEMPLATES}
    assert train["tags"] == ["awol"] and manifests["train"]["skipped"] == {"malformed_row": 1}
    valid = corpus.samples("fma", "valid")["fma-000003"]
    assert valid["labels"] == ["Hip-Hop", "Experimental Pop"]
    assert set(valid["text"]) <= {t.format(genres="Hip-Hop and Experimental Pop") for t in fma.GENRE_ONLY_TEMPLATES}
    assert corpus.samples("fma", "test")["fma-000005"]["labels"] == ["Rock"]  # genre_top when genres is empty
    assert manifests["test"]["skipped"] == {"no_genre": 1}


def test_fma_small_subset_reads_only_small_tracks(corpus):
    _fma_metadata(corpus)
    corpus.wav("fma_small/000/000002.mp3", seconds=0.5, fmt="MP3", subtype="MPEG_LAYER_III")
    manifest = corpus.build("fma", {"subset": "small"}, splits=["train"])["train"]
    assert manifest["num_samples"] == 1 and manifest["items"] == 2  # track 2 + the malformed row


def test_cochlscene_folders_and_places(corpus):
    corpus.wav("Train/CrowdedIndoor/CrowdedIndoor_user0001_1.wav")
    corpus.wav("Train/Bus/Bus_user0002_3.wav")
    corpus.wav("Train/Spaceship/x.wav")  # not one of the 13 scenes
    corpus.wav("Val/Park/Park_user0100_1.wav")
    corpus.wav("Test/Street/Street_user0200_1.wav")
    manifests = corpus.build("cochlscene")
    indoor = corpus.samples("cochlscene", "train")["cochlscene-CrowdedIndoor_CrowdedIndoor_user0001_1"]
    assert indoor["labels"] == ["CrowdedIndoor"]
    assert set(indoor["text"]) <= {t.format(place="a crowded indoor space") for t in cochlscene.TEMPLATES}
    assert manifests["train"]["skipped"] == {"unknown_label": 1}
    assert list(corpus.samples("cochlscene", "valid")) == ["cochlscene-Park_Park_user0100_1"]
    assert list(corpus.samples("cochlscene", "test")) == ["cochlscene-Street_Street_user0200_1"]


EPIC_HEADER = ["annotation_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "start_sample",
               "stop_sample", "description", "class", "class_id"]


def test_epic_sounds_segments_cut_by_timestamp(corpus):
    corpus.csv("EPIC_Sounds_train.csv", EPIC_HEADER, [
        ["P01_01_0", "P01", "P01_01", "00:00:00.50", "00:00:01.25", 12000, 30000, "paper rustle", "rustle", 4],
        ["P01_01_1", "P01", "P01_01", "00:00:01.50", "00:00:01.00", 0, 0, "backwards", "rustle", 4],
        ["P01_01_2", "P01", "P01_01", "00:00:09.00", "00:00:10.00", 0, 0, "after the end", "water", 5]])
    corpus.csv("EPIC_Sounds_validation.csv", EPIC_HEADER, [
        ["P02_01_0", "P02", "P02_01", "00:00:00.00", "00:00:00.20", 0, 4800, "tap on", "water", 5]])
    path = corpus.wav("audio/P01_01.wav", seconds=2.0)
    corpus.wav("audio/P02_01.wav", seconds=0.5)
    manifests = corpus.build("epic_sounds")
    rustle = corpus.samples("epic_sounds", "train")["epic_sounds-P01_01_0"]
    assert rustle["duration"] == pytest.approx(0.75) and rustle["segment"] == [0.5, 1.25]
    assert rustle["text"][0] == "paper rustle" and rustle["labels"] == ["rustle"]
    assert rustle["text"][1] in {t.format(label="rustle") for t in epic_sounds.TEMPLATES}
    source = sf.read(path, dtype="int16")[0]
    np.testing.assert_array_equal(corpus.audio("epic_sounds", "train", "epic_sounds-P01_01_0"),
                                  source[int(0.5 * RATE):int(1.25 * RATE)])
    assert manifests["train"]["skipped"] == {"empty_segment": 1, "malformed_row": 1}
    assert corpus.samples("epic_sounds", "valid")["epic_sounds-P02_01_0"]["duration"] == pytest.approx(0.2)


def test_kinetics_extracts_audio_with_ffmpeg(corpus, monkeypatch):
    corpus.csv("annotations/train.csv", ["label", "youtube_id", "time_start", "time_end", "split"],
               [["playing guitar", "abc123def45", 10, 20, "train"], ["abseiling", "silentvid01", 0, 10, "train"],
                ["abseiling", "notdownload", 0, 10, "train"], ["", "nolabel0001", 0, 10, "train"],
                ["abseiling", "", 0, 10, "train"]])
    if not HAVE_FFMPEG:  # where ffmpeg cannot be installed, the recipe must stop with one clear line
        with pytest.raises(ValueError, match="needs the ffmpeg binary"):
            corpus.build("kinetics700", splits=["train"])
        return
    corpus.video("train/playing guitar/abc123def45_000010_000020.mp4")
    corpus.video("train/silentvid01_000000_000010.mp4", audio=False)  # flat layout, no audio track
    manifest = corpus.build("kinetics700", splits=["train"])["train"]
    guitar = corpus.samples("kinetics700", "train")["kinetics700-abc123def45_000010_000020"]
    assert guitar["labels"] == ["playing guitar"] and 0.35 < guitar["duration"] < 0.6  # AAC adds priming samples
    assert set(guitar["text"]) <= {t.format(action="playing guitar") for t in kinetics.TEMPLATES}
    assert manifest["skipped"] == {"malformed_row": 1, "missing_audio": 1, "no_audio_track": 1, "no_label": 1}


def test_video_recipes_without_ffmpeg_fail_in_one_line(corpus, monkeypatch):
    corpus.csv("annotations/train.csv", ["label", "youtube_id", "time_start", "time_end", "split"],
               [["abseiling", "abc", 0, 10, "train"]])
    monkeypatch.setenv("PATH", str(corpus.src))  # no ffmpeg on PATH
    for name in ("kinetics700", "meld"):
        with pytest.raises(ValueError, match=f"corpus '{name}' extracts audio from video files and needs the ffmpeg"):
            corpus.build(name, splits=["train"])


def test_findsounds_crawl_dump(corpus):
    hits = [
        {"url": "http://sfx.example.com/animals/Dog_Bark2.wav", "file": "files/aa/dog.wav", "keywords": ["dog", "bark"],
         "description": "A dog barking twice", "host": "sfx.example.com", "sample_rate": 22050},
        {"url": "http://other.example.org/Thunder_Clap.aiff", "file": "files/bb/thunder.wav"},
        {"url": "http://x.example/123.wav", "file": "files/cc/none.wav"},  # no text at all
        {"file": "files/dd/nourl.wav"},
    ]
    corpus.text("crawl.jsonl", "\n".join(json.dumps(h) for h in hits) + "\n{not json\n")
    for hit in hits:
        corpus.wav(hit["file"])
    manifest = corpus.build("findsounds", {"test_fraction": 0.0}, splits=["train"])["train"]
    samples = corpus.samples("findsounds", "train")
    dog_id = hashlib.sha1(hits[0]["url"].encode()).hexdigest()[:16]
    dog = samples[f"findsounds-{dog_id}"]
    assert (
        dog["text"][0] == "A dog barking twice"
        and dog["labels"] == ["dog", "bark"]
        and dog["host"] == "sfx.example.com"
    )
    assert dog["text"][1] in {t.format(words="dog and bark") for t in findsounds.TEMPLATES}
    thunder = samples[f"findsounds-{hashlib.sha1(hits[1]['url'].encode()).hexdigest()[:16]}"]
    assert thunder["text"][0] in {t.format(words="thunder clap") for t in findsounds.TEMPLATES}
    assert manifest["skipped"] == {"malformed_row": 2, "no_caption": 1}


def test_findsounds_hash_split_is_stable(corpus):
    hits = [{"url": f"http://x.example/sound{i}.wav", "file": f"files/{i}.wav", "keywords": ["k"]} for i in range(40)]
    corpus.text("crawl.jsonl", "\n".join(json.dumps(h) for h in hits))
    recipe = findsounds.FindSoundsRecipe()
    train, test = recipe.items(corpus.src, "train"), recipe.items(corpus.src, "test")
    assert len(train) + len(test) == 40 and 0 < len(test) < 12
    assert not {i.id for i in train} & {i.id for i in test}
    corpus.text("crawl.jsonl", "\n".join(json.dumps(h) for h in hits[::-1] + [{"url": "http://new", "file": "n.wav"}]))
    assert {i.id for i in recipe.items(corpus.src, "test")} >= {i.id for i in test}  # order and growth keep splits
