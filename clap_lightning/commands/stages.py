"""`clap-lightning fit | validate | test --config YAML [key=value ...]`: the Lightning stages of pretraining."""

from __future__ import annotations

import argparse

from clap_lightning.config import ExperimentConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--ckpt_path` and `key=value` overrides (shared with `multitask fit`)."""
    parser.add_argument("--config", required=True, help="experiment YAML (configs/experiment/*.yaml)")
    parser.add_argument("--ckpt_path", "--ckpt-path", default=None,
                        help="checkpoint to resume from (fit) or to evaluate; 'last' = ModelCheckpoint's newest last "
                             "checkpoint (none: refused); 'auto' = newest complete checkpoint in run_dir incl. SLURM "
                             "hpc_ckpt_N (fit: none = fresh)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the stage named by `args.command` (fit, validate or test)."""
    from clap_lightning.lit.run import run_stage

    run_stage(args.command, load_config(ExperimentConfig, args.config, args.overrides), args.ckpt_path)
    return 0
