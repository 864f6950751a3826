"""Generic csv/folder recipes, the leakage filter, and the validate / stats CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clap_lightning.data import schema

REPO = Path(__file__).resolve().parents[3]


def test_csv_recipe_captions_labels_splits_segments(corpus):
    corpus.csv("meta.tsv", ["path", "cap_a", "cap_b", "category", "fold", "t0", "t1", "who"], [
        ["clips/a.wav", "a dog barks", "barking", "dog;animal", "train", "", "", "x"],
        ["clips/b.wav", "", "", "rain", "train", "0.1", "0.2", "y"],  # labels only -> template captions
        ["clips/c.wav", "", "", "", "train", "", "", "z"],  # nothing to caption
        ["", "orphan caption", "", "", "train", "", "", ""],  # no audio path
        ["clips/d.wav", "held out", "", "", "test", "", "", ""],
        ["clips/e.wav", "missing file", "", "", "train", "", "", ""],
    ], delimiter="\t")
    for name in "abcd":
        corpus.wav(f"clips/{name}.wav")
    options = {"name": "mycorpus", "file": "meta.tsv", "delimiter": "tab", "audio_column": "path",
               "caption_columns": "cap_a,cap_b", "label_columns": "category", "split_column": "fold",
               "splits": "train,test", "start_column": "t0", "end_column": "t1", "meta_columns": "who",
               "license": "CC-BY-4.0"}
    manifests = corpus.build("csv", options)
    train = corpus.samples("mycorpus", "train")
    dog = train["mycorpus-clips_a"]
    assert dog["text"] == ["a dog barks", "barking"] and dog["labels"] == ["dog", "animal"]
    assert dog["source"] == "mycorpus" and dog["who"] == "x" and dog["license"] == "CC-BY-4.0"
    rain = train["mycorpus-clips_b"]
    assert all("rain" in t for t in rain["text"]) and rain["duration"] == pytest.approx(0.1)
    assert manifests["train"]["skipped"] == {"malformed_row": 1, "missing_audio": 1, "no_caption": 1}
    assert list(corpus.samples("mycorpus", "test")) == ["mycorpus-clips_d"]
    assert (corpus.out / "mycorpus" / "train" / "mycorpus-train-000000.tar").is_file()
    with pytest.raises(ValueError, match="no column\\(s\\) caption"):
        corpus.build("csv", {"file": "meta.tsv", "delimiter": "tab", "audio_column": "path"})
    with pytest.raises(ValueError, match="bad corpus name 'My Corpus'"):
        corpus.build("csv", {"name": "My Corpus"})


def test_csv_duplicate_ids_across_shards_and_extra_cells_are_counted(corpus):
    """4 items per shard: the repeated ids sit in later shards than their first rows."""
    corpus.csv("meta.csv", ["audio", "caption", "category"], [
        ["a.wav", "first a", "dog"], ["b.wav", "b", "cat"], ["c.wav", "c", "cow"], ["d.wav", "d", "owl"],
        ["e.wav", "e", "bee"], ["a.wav", "second a", "dog"],  # shard 1: the id of row 1
        ["x.y.wav", "x dot y", "fox"], ["x_y.wav", "x underscore y", "fox"],  # same key mycorpus-x_y
        ["f.wav", "a dog", " barks", "dog"],  # an unquoted comma: one cell too many
        ["g.wav", "g", "gnu"],
    ])
    for name in ("a", "b", "c", "d", "e", "x.y", "x_y", "f", "g"):
        corpus.wav(f"{name}.wav")
    manifest = corpus.build("csv", {"name": "mycorpus", "file": "meta.csv", "label_columns": "category"})["train"]
    samples = corpus.samples("mycorpus", "train")
    assert sorted(samples) == ["mycorpus-a", "mycorpus-b", "mycorpus-c", "mycorpus-d", "mycorpus-e", "mycorpus-g",
                               "mycorpus-x_y"]
    assert samples["mycorpus-a"]["text"] == ["first a"] and samples["mycorpus-x_y"]["text"] == ["x dot y"]
    assert manifest["skipped"] == {"duplicate_key": 2, "malformed_row": 1} and manifest["items"] == 10
    assert len(manifest["shards"]) == 3
    assert any("row 9" in e["detail"] and "beyond the header's 3 columns" in e["detail"]
               for e in manifest["skipped_examples"])


def test_folder_recipe_labels_from_folders_or_pattern(corpus):
    for path in ("train/dog_bark/1.wav", "train/Rain/2.flac", "train/loose.wav", "test/dog_bark/3.wav", "notes.txt"):
        if path.endswith("txt"):
            corpus.text(path, "not audio")
        else:
            corpus.wav(path)
    manifests = corpus.build("folder", {"name": "pets", "split_folders": True, "splits": "train,test"})
    train = corpus.samples("pets", "train")
    assert sorted(train) == ["pets-Rain_2", "pets-dog_bark_1"]
    assert train["pets-dog_bark_1"]["labels"] == ["dog_bark"] and all(
        "dog bark" in t for t in train["pets-dog_bark_1"]["text"]
    )
    assert train["pets-Rain_2"]["labels"] == ["Rain"] and all("rain" in t for t in train["pets-Rain_2"]["text"])
    assert manifests["train"]["skipped"] == {"unknown_label": 1} and list(corpus.samples("pets", "test")) == [
        "pets-dog_bark_3"
    ]

    corpus.out = corpus.out.with_name("by_pattern")
    for name in ("bangu__bangu-01.wav", "x__daluo-02.wav", "nolabel.wav"):
        corpus.wav(f"flat/{name}")
    corpus.src = corpus.src / "flat"
    manifest = corpus.build("folder", {"name": "gongs", "pattern": r"__(?P<label>[a-z]+)-\d+\.wav$",
                                       "test_fraction": 0.0}, splits=["train"])["train"]
    assert {m["labels"][0] for m in corpus.samples("gongs", "train").values()} == {"bangu", "daluo"}
    assert manifest["skipped"] == {"unknown_label": 1}
    with pytest.raises(ValueError, match="named group"):
        corpus.build("folder", {"pattern": "[a-z]+"})


def test_exclude_file_formats(tmp_path):
    lines = tmp_path / "ids.txt"
    lines.write_text("# AudioCaps test\nyoutube:abc\n\nclotho-x  # a key\n")
    assert schema.read_exclude_file(lines) == {"youtube:abc", "clotho-x"}
    listed = tmp_path / "ids.json"
    listed.write_text(json.dumps(["freesound:1", 2]))
    assert schema.read_exclude_file(listed) == {"freesound:1", "2"}
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no ids"):
        schema.read_exclude_file(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="not found"):
        schema.read_exclude_file(tmp_path / "absent.txt")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "data_recipes", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_build_exclude_validate_stats(corpus, tmp_path):
    corpus.csv("metadata.csv", ["audio", "caption"], [[f"{i}.wav", f"clip number {i}"] for i in range(6)])
    for i in range(6):
        corpus.wav(f"{i}.wav", seconds=0.2 + 0.05 * i)
    (tmp_path / "exclude.txt").write_text("toy-1\n3\n")
    build = run_cli("build", "csv", "--src", str(corpus.src), "--out", "out", "-o", "name=toy", "--sample-rate", "8000",
                    "--exclude", str(tmp_path / "exclude.txt"), "--samples-per-shard", "2", "--no-progress",
                    "--flac-level", "0", cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert "toy/train: 4 clips" in build.stdout and "2 excluded" in build.stdout
    manifest = schema.read_manifest(tmp_path / "out" / "toy" / "train")
    assert manifest["excluded"] == 2 and manifest["build"]["exclude"]["ids"] == 2
    assert manifest["build"]["flac_level"] == 0
    refused = run_cli("build", "csv", "--src", str(corpus.src), "--out", "out2", "-o", "name=toy", "--flac-level", "9",
                      cwd=tmp_path)
    assert refused.returncode == 2 and "--flac-level" in refused.stderr

    validate = run_cli("validate", "out", cwd=tmp_path)
    assert validate.returncode == 0 and "all splits ok" in validate.stdout and "4 clips" in validate.stdout

    stats = run_cli("stats", "out", "--json", "stats.json", cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    figures = json.loads((tmp_path / "stats.json").read_text())[0]
    assert figures["clips"] == 4 and figures["captions_per_clip"]["mean"] == 1.0 and figures["excluded"] == 2
    assert figures["hours"] == pytest.approx((0.2 + 0.3 + 0.4 + 0.45) / 3600, rel=1e-3)
    png = tmp_path / "out" / "durations.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_reports_damaged_shards(corpus, tmp_path):
    corpus.csv("metadata.csv", ["audio", "caption"], [[f"{i}.wav", f"clip {i}"] for i in range(5)])
    for i in range(5):
        corpus.wav(f"{i}.wav")
    corpus.build("csv", {"name": "toy"})
    directory = corpus.out / "toy" / "train"
    first = directory / "toy-train-000000.tar"
    with tarfile.open(first) as tar:  # drop one flac and one whole sample, give a json the wrong split
        members = [
            (m, tar.extractfile(m).read()) for m in tar if m.name != "toy-0.flac" and not m.name.startswith("toy-1.")
        ]
    with tarfile.open(first, "w") as tar:
        for member, data in members:
            if member.name.endswith(".json") and "toy-2" in member.name:
                data = json.dumps({**json.loads(data), "split": "test"}).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    (directory / "toy-train-000009.tar").write_bytes(b"")
    (directory / "toy-train-000001.tar.tmp").write_bytes(b"")
    result = run_cli("validate", str(corpus.out), cwd=tmp_path)
    assert result.returncode == 1 and "1 split(s) with problems" in result.stdout
    for problem in (
        "members ['json'], expected flac and json",
        "json split 'test'",
        "3 samples, manifest says 4",
        "h decoded, manifest says",
        "toy-train-000009.tar: shard not listed",
        "unfinished shard",
    ):
        assert problem in result.stdout, result.stdout


def test_nothing_usable_is_an_error_and_leaves_no_shards(corpus):
    corpus.csv("metadata.csv", ["audio", "caption"], [["missing1.wav", "a"], ["missing2.wav", "b"]])
    with pytest.raises(ValueError, match="no usable clips among 2 items .*missing_audio"):
        corpus.build("csv", {"name": "empty"})
    assert not list((corpus.out / "empty" / "train").glob("*.tar"))
    assert not (corpus.out / "empty" / "train" / "manifest.json").exists()


def test_ids_of_audiocaps_test_keep_its_segments_out_of_audioset(corpus, tmp_path):
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    corpus.csv("audiocaps/dataset/test.csv", header, [[1, "testvideo01", 30, "a dog barks"],
                                                      [2, "testvideo01", 30, "a dog barks twice"]])
    segments = "# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n"
    corpus.csv("audioset/class_labels_indices.csv", ["index", "mid", "display_name"], [[0, "/m/0bt9lr", "Dog"]])
    corpus.text("audioset/balanced_train_segments.csv", segments + 'testvideo01, 30.000, 40.000, "/m/0bt9lr"\n'
                                                                   'trainvideo1, 0.000, 10.000, "/m/0bt9lr"\n')
    corpus.text("audioset/unbalanced_train_segments.csv", segments)
    for name in ("testvideo01", "trainvideo1"):
        corpus.wav(f"audioset/audios/balanced_train_segments/Y{name}.wav")
    listed = run_cli("ids", "audiocaps", "--src", str(corpus.src / "audiocaps"), "--split", "test", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "# audiocaps test: 1 clips (python -m data_recipes ids)",
        "youtube:testvideo01",
    ]
    (tmp_path / "eval_ids.txt").write_text(listed.stdout)
    build = run_cli("build", "audioset", "--src", str(corpus.src / "audioset"), "--out", "out", "--split", "train",
                    "--sample-rate", "8000", "--exclude", "eval_ids.txt", "--no-progress", cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    manifest = schema.read_manifest(tmp_path / "out" / "audioset" / "train")
    assert manifest["excluded"] == 1 and manifest["num_samples"] == 1
    assert manifest["build"]["exclude"]["sha1"] == schema.exclude_digest(
        schema.read_exclude_file(tmp_path / "eval_ids.txt")
    )


@pytest.mark.parametrize("argv, message", [
    (["build", "demo", "--out", "OUT", "-o", "nokey"], "bad option 'nokey': expected KEY=VALUE"),
    (["build", "demox", "--out", "OUT"], "unknown corpus 'demox'"),
    (["build", "demo", "--out", "OUT", "-o", "train_per_clas=3"], "bad config key"),
    (["build", "demo", "--out", "OUT", "--exclude", "MISSING"], "exclusion list MISSING not found"),
    (["build", "folder", "--out", "OUT", "--src", "MISSING"], "MISSING"),
    (["merge", "OUT", "demo", "train"], "no part manifests in"),
])
def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys, argv, message):
    from data_recipes.cli import main

    argv = [a.replace("OUT", str(tmp_path / "out")).replace("MISSING", str(tmp_path / "missing")) for a in argv]
    message = message.replace("MISSING", str(tmp_path / "missing"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("error: ") and message in err, err


def test_cli_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch):
    """A ValueError that is not bad input (a bug in a recipe or the writer) is not turned into one line."""
    from data_recipes import cli, writer

    def broken(*args, **kwargs):
        raise ValueError("cannot reshape array of size 3 into shape (2,)")

    monkeypatch.setattr(writer, "build_corpus", broken)
    with pytest.raises(ValueError, match="cannot reshape"):
        cli.main(["build", "demo", "--out", str(tmp_path / "out")])


def test_a_clip_item_caption_given_as_a_string_is_one_caption():
    from data_recipes.common import ClipItem

    assert ClipItem("x", "x.wav", "a dog barks").text == ("a dog barks",)
    assert ClipItem("x", "x.wav", ("a", "b")).text == ("a", "b")
