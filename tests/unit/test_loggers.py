"""Which loggers a config may name, and the one-line error for a missing tracking package."""

from __future__ import annotations

import sys

import pytest

from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.errors import ConfigError
from clap_lightning.lit.loggers import TRACKING_EXTRA, build_loggers, check_logger_names


def test_unknown_or_repeated_logger_names_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="^trainer.loggers: unknown logger 'tb'; known: csv, tensorboard, wandb, "
                                          "mlflow$"):
        check_logger_names(["csv", "tb"])
    with pytest.raises(ConfigError, match="names 'csv' twice"):
        check_logger_names(["csv", "csv"])


def test_a_missing_tracking_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(ConfigError) as err:
        check_logger_names(["csv", "mlflow"])
    assert str(err.value) == f"trainer.loggers has mlflow, but the mlflow package is not installed: {TRACKING_EXTRA}"


def test_a_bad_wandb_mode_is_refused_before_anything_starts(tmp_path):
    config = load_config(
        ExperimentConfig, None, ["trainer.loggers=[csv,wandb]", "trainer.wandb.mode=onlne", f"run_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="^trainer.wandb.mode must be one of offline, online, got 'onlne'$"):
        build_loggers(config)
    assert not (tmp_path / "wandb").exists()


def test_loggers_come_in_the_configured_order_and_csv_is_the_default(tmp_path):
    assert [type(x).__name__ for x in build_loggers(load_config(ExperimentConfig, None, [f"run_dir={tmp_path}"]))] == [
        "CSVLogger"
    ]
    config = load_config(ExperimentConfig, None, ["trainer.loggers=[tensorboard,csv]", f"run_dir={tmp_path}"])
    assert [type(x).__name__ for x in build_loggers(config)] == ["TensorBoardLogger", "CSVLogger"]
