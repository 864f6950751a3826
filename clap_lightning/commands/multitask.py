"""`clap-lightning multitask fit --config YAML`: supervised multi-task pretraining of the audio encoder."""

from __future__ import annotations

import argparse

from clap_lightning.commands.stages import add_config_arguments
from clap_lightning.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stages = parser.add_subparsers(dest="multitask_command", required=True)
    add_config_arguments(stages.add_parser("fit", help="train (or resume), e.g. --config configs/multitask/demo3.yaml"))


def run(args: argparse.Namespace) -> int:
    from clap_lightning.lit.multitask import fit_multitask
    from clap_lightning.lit.multitask_config import MultiTaskConfig

    fit_multitask(load_config(MultiTaskConfig, args.config, args.overrides), args.ckpt_path)
    return 0
