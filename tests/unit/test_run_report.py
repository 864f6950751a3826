"""The report page on hand-made run folders: resumed logs joined by step, empty panels, bad folders."""

from __future__ import annotations

import pytest

from clap_lightning.cli import main
from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.errors import ConfigError
from clap_lightning.eval.run_report import read_metrics, series, validation_rows, write_run_report


def write_run(run_dir, versions: dict[int, str]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: resumed\ntrainer:\n  max_steps: 6\n")
    for version, text in versions.items():
        folder = run_dir / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(text)


def test_resumed_logs_are_joined_by_step_and_blank_cells_are_not_points(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, {
        # version_10 sorts after version_2 although its name sorts before
        10: "epoch,step,train/loss,perf/pairs_per_s\n0,5,0.5,30.0\n",
        2: "epoch,step,train/loss,val/loss,data/skipped_bad_audio\n0,1,2.0,,1\n0,1,,2.5,\n0,3,1.0,,4\n",
    })
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 1, 3, 5]
    assert series(rows, "train/loss") == {"train/loss": ([1, 3, 5], [2.0, 1.0, 0.5])}
    assert series(rows, "val/loss") == {"val/loss": ([1], [2.5])}
    assert series(rows, "data/skipped_*") == {"data/skipped_bad_audio": ([1, 3], [1.0, 4.0])}


def test_a_page_without_evaluation_says_how_to_get_one(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, {0: "epoch,step,train/loss\n0,4,1.5\n"})
    text = write_run_report(run_dir).read_text()
    assert "<title>CLAP run resumed</title>" in text
    assert "No evaluation in this run folder yet" in text and "No confusion plots yet" in text
    assert text.count("<img ") == 8 and "http" not in text


def test_validation_scores_stand_beside_the_paper():
    rows = [{"step": 1, "val/esc50/acc": 0.5}, {"step": 2, "val/esc50/acc": 0.75, "val/unknown_task/acc": 0.1}]
    assert validation_rows(rows) == [{"task": "esc50", "metric": "acc", "ours": "0.7500", "paper": "0.9390",
                                      "delta": "-0.1890", "clips": ""}]


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no config.yaml, so not a clap-lightning run folder"


def test_report_at_fit_end_needs_the_csv_logger():
    with pytest.raises(ConfigError, match="report is true but trainer.loggers has no csv"):
        load_config(ExperimentConfig, None, ["report=true", "trainer.loggers=[tensorboard]"])
