"""The `clap-lightning` command: fit | validate | test | zeroshot | eval | caption | convert | multitask fit."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from clap_lightning.errors import ClapError
from clap_lightning.eval.eval_cli import add_eval_arguments, eval_command

log = logging.getLogger("clap_lightning")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (configs/experiment/*.yaml)")
    parser.add_argument("--ckpt_path", "--ckpt-path", default=None,
                        help="checkpoint to resume from (fit) or to evaluate; 'last' = ModelCheckpoint's newest; "
                             "'auto' = newest complete checkpoint in run_dir incl. SLURM hpc_ckpt_N (fit: none = fresh)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clap-lightning", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for stage, help_text in (("fit", "pretrain (or resume)"), ("validate", "run the validation loop"),
                             ("test", "run the test loop")):
        _add_config_args(commands.add_parser(stage, help=help_text))
    zs = commands.add_parser("zeroshot", help="zero-shot classification of labelled shards")
    zs.add_argument("--checkpoint", required=True, help="a clap-lightning checkpoint")
    zs.add_argument("--data", required=True, help="labelled eval shards (split dir, brace pattern or list)")
    zs.add_argument("--classes", default=None,
                    help="comma-separated class names or a file with one per line (default: labels found)")
    zs.add_argument("--prompt", default=None, help="prompt template, default from the checkpoint's config")
    zs.add_argument("--out", default=None, help="report directory (default: <run_dir>/zeroshot)")
    zs.add_argument("--batch-size", type=int, default=64)
    zs.add_argument("--num-workers", type=int, default=2)
    from clap_lightning.eval.captioning_cli import add_caption_arguments

    add_caption_arguments(commands.add_parser("caption", help="caption audio files with a captioning checkpoint"))
    add_eval_arguments(commands.add_parser("eval", help="score a checkpoint on registry tasks vs the paper"))
    from clap_lightning.convert import add_msclap_arguments

    formats = commands.add_parser("convert", help="import released weights").add_subparsers(dest="format", required=True)
    add_msclap_arguments(formats.add_parser("msclap", help="Microsoft CLAP 2022 / 2023 / clapcap checkpoints"))
    multitask = commands.add_parser("multitask", help="supervised multi-task pretraining of the audio encoder")
    stages = multitask.add_subparsers(dest="multitask_command", required=True)
    _add_config_args(stages.add_parser("fit", help="train (or resume), e.g. --config configs/multitask/demo3.yaml"))
    return parser


def read_classes(value: Optional[str]) -> Optional[list[str]]:
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [c.strip() for c in value.split(",") if c.strip()]


def run_stage_command(args: argparse.Namespace) -> int:
    from clap_lightning.config import load_config
    from clap_lightning.lit.run import run_stage

    config = load_config(args.config, args.overrides)
    run_stage(args.command, config, args.ckpt_path)
    return 0


def run_zeroshot_command(args: argparse.Namespace) -> int:
    from clap_lightning.eval.runner import run_zeroshot

    result, out_dir = run_zeroshot(args.checkpoint, args.data, read_classes(args.classes), args.prompt,
                                   args.out, args.batch_size, args.num_workers)
    print(f"report: {out_dir}/results.md, {out_dir}/confusion.png")
    print(f"zero-shot accuracy: {result.accuracy:.3f} on {result.num_clips} held-out clips, "
          f"{len(result.classes)} classes (chance {1 / len(result.classes):.3f})")
    return 0


def run_convert_command(args: argparse.Namespace) -> int:
    from clap_lightning.convert import convert_command

    convert_command(args)
    print(f"wrote {args.out}")
    return 0


def run_caption_command(args: argparse.Namespace) -> int:
    from clap_lightning.eval.captioning_cli import caption_command

    return caption_command(args) or 0


def run_multitask_command(args: argparse.Namespace) -> int:
    from clap_lightning.lit.multitask import fit_multitask
    from clap_lightning.lit.multitask_config import load_multitask_config

    fit_multitask(load_multitask_config(args.config, args.overrides), args.ckpt_path)
    return 0


COMMANDS = {"fit": run_stage_command, "validate": run_stage_command, "test": run_stage_command,
            "zeroshot": run_zeroshot_command, "caption": run_caption_command, "eval": eval_command,
            "convert": run_convert_command, "multitask": run_multitask_command}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ClapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
