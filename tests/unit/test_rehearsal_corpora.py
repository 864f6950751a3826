"""The rehearsal's miniature corpora stay buildable: every recipe reads its miniature, the leakage filter drops the
planted clips, and every one of the 26 tasks finds its shards."""

from __future__ import annotations

import os

import pytest

from clap_lightning.data import schema
from clap_lightning.eval.tasks import TASKS
from tests.rehearsal import corpora
from tests.rehearsal.__main__ import build_shards, ensure_ffmpeg, make_corpora


@pytest.mark.slow
def test_miniature_corpora_build_with_their_recipes(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.environ["PATH"])  # ensure_ffmpeg may prepend a folder; restored afterwards
    monkeypatch.chdir(tmp_path)
    ensure_ffmpeg(tmp_path)
    make_corpora(tmp_path / "raw")
    build_shards(tmp_path / "raw")  # raises when a leaked clip was not dropped
    for name in corpora.PRETRAINING:
        assert schema.read_manifest(schema.split_dir("data/shards", name, "train"))["num_samples"] > 0, name
    for spec in TASKS.values():
        assert schema.read_manifest(schema.split_dir("data/shards", spec.source, spec.split))["num_samples"] > 0
    excluded = {name: schema.read_manifest(schema.split_dir("data/shards", name, "train"))["excluded"]
                for name in corpora.PRETRAINING}
    assert {k: v for k, v in excluded.items() if v} == corpora.LEAKED


def test_report_check_wants_a_number_in_every_row_captioning_included(tmp_path):
    from tests.rehearsal.__main__ import check_report

    def write(rows):
        path = tmp_path / "results.csv"
        path.write_text("task,metric,ours\n" + "".join(f"{task},m,{ours}\n" for task, ours in rows))
        return path

    scored = [(name, "0.5") for name in TASKS]
    assert check_report(write(scored)) == 26
    with pytest.raises(SystemExit, match=r"without a number \[.*'esc50'"):
        check_report(write([(n, "skipped: no shards" if n == "esc50" else v) for n, v in scored]))
    skipped = "skipped: captioning needs a captioner (eval --captioner CKPT)"
    with pytest.raises(SystemExit, match=r"without a number \['audiocaps_captioning', 'clotho_captioning'\]"):
        check_report(write([(n, skipped if n.endswith("_captioning") else v) for n, v in scored]))
    with pytest.raises(SystemExit, match=r"tasks missing \['sesa'\]"):
        check_report(write([row for row in scored if row[0] != "sesa"]))
