"""The experiment loggers a config names in `trainer.loggers`: csv, tensorboard, wandb, mlflow.

Each writes under the run folder unless told otherwise, and none needs a network by default:
W&B runs offline (`wandb sync <run_dir>/wandb/offline-run-*` uploads later) and MLflow writes a
local file store (`<run_dir>/mlruns`). Lightning's loggers write on global rank 0 only, and
Lightning logs the module's hyperparameters, which hold the resolved config, once per run.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from clap_lightning.errors import ConfigError

# logger name -> the module it needs (None: always there)
LOGGER_MODULES = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
TRACKING_EXTRA = "pip install clap-lightning[tracking]"
WANDB_MODES = ("offline", "online")


class FinishingWandbLogger(WandbLogger):
    """Lightning's W&B logger, closing its run when the trainer ends (so a second fit starts a new run)."""

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def check_logger_names(names: list) -> None:
    """Refuse unknown or repeated names and loggers whose package is not installed, in one line each."""
    for name in names:
        if name not in LOGGER_MODULES:
            raise ConfigError(f"trainer.loggers: unknown logger '{name}'; known: {', '.join(LOGGER_MODULES)}")
        if names.count(name) > 1:
            raise ConfigError(f"trainer.loggers names '{name}' twice")
        module = LOGGER_MODULES[name]
        if module is not None and not _is_installed(module):
            raise ConfigError(f"trainer.loggers has {name}, but the {module} package is not installed: "
                              f"{TRACKING_EXTRA}")


def _is_installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def build_loggers(config) -> list[Logger]:
    """The loggers of `config.trainer.loggers`, in that order, writing under `config.run_dir`.

    Args:
        config: any run config with `name`, `run_dir` and a `trainer` section.

    Raises:
        ConfigError: an unknown logger, a bad option, or a missing package (naming the extra to install).
    """
    names = list(config.trainer.loggers)
    check_logger_names(names)
    return [BUILDERS[name](config) for name in names]


def _csv(config) -> Logger:
    return CSVLogger(config.run_dir, name="logs")  # logs/version_N: a resumed run never overwrites


def _tensorboard(config) -> Logger:
    return TensorBoardLogger(config.run_dir, name=config.trainer.tensorboard.name, default_hp_metric=False)


def _wandb(config) -> Logger:
    options = config.trainer.wandb
    if options.mode not in WANDB_MODES:
        raise ConfigError(f"trainer.wandb.mode must be one of {', '.join(WANDB_MODES)}, got '{options.mode}'")
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to a temp dir if it is missing
    return FinishingWandbLogger(name=config.name, save_dir=config.run_dir, project=options.project,
                                entity=options.entity or None, offline=options.mode == "offline",
                                tags=list(options.tags) or None)


def _mlflow(config) -> Logger:
    options = config.trainer.mlflow
    uri = options.tracking_uri or Path(config.run_dir, "mlruns").resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked: it is the store that needs no server or database.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=options.experiment, run_name=config.name, tracking_uri=uri)


BUILDERS: dict[str, Callable[..., Logger]] = {"csv": _csv, "tensorboard": _tensorboard, "wandb": _wandb,
                                               "mlflow": _mlflow}
