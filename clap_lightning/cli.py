"""The `clap-lightning` command: one verb per module of clap_lightning/commands (see VERBS)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Optional, Sequence

from clap_lightning.commands import (
    caption,
    convert,
    embed,
    export,
    finetune,
    multitask,
    report,
    search,
    stages,
    zeroshot,
)
from clap_lightning.commands import eval as eval_command
from clap_lightning.errors import ClapError

# verb -> (its module in clap_lightning/commands: add_arguments(parser), run(args)), help line
VERBS = {
    "fit": (stages, "pretrain (or resume)"),
    "validate": (stages, "run the validation loop"),
    "test": (stages, "run the test loop"),
    "zeroshot": (zeroshot, "zero-shot classification of labelled shards"),
    "eval": (eval_command, "score a checkpoint on registry tasks vs the paper"),
    "caption": (caption, "caption audio files with a captioning checkpoint"),
    "convert": (convert, "import released weights"),
    "finetune": (finetune, "supervised fine-tuning (or a linear probe) of the audio encoder on a labelled task"),
    "embed": (embed, "embed a sound library (folder, list, csv, shards) into a resumable index"),
    "search": (search, "the clips of an index nearest to a text query"),
    "export": (export, "export a model for use outside clap-lightning (ONNX, Hugging Face, safetensors)"),
    "report": (report, "write RUN_DIR/report.html: config, training curves, eval vs the paper"),
    "multitask": (multitask, "supervised multi-task pretraining of the audio encoder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clap-lightning", description=__doc__)
    verbs = parser.add_subparsers(dest="command", required=True)
    for verb, (command, help_text) in VERBS.items():
        command.add_arguments(verbs.add_parser(verb, help=help_text))
    return parser


def configure_output() -> None:
    """One line per log record, and none of the third-party warnings that say nothing to a user."""
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host that set up logging keeps its own
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        # Lightning prints its records with a handler of its own (set up again as it imports its
        # parts); passed on to ours as well, each of its lines appeared twice.
        handler.addFilter(lambda record: not record.name.startswith("lightning"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    for message in (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6 on torch 2.11, not ours to fix
        r"Your `IterableDataset` has `__len__` defined",  # our loader states its exact batches per worker
    ):
        warnings.filterwarnings("ignore", message=message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_output()
    try:
        return VERBS[args.command][0].run(args)
    except ClapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:  # not imported, no process group (and --help stays light)
            from clap_lightning.objectives.collectives import close_process_group

            close_process_group()


if __name__ == "__main__":
    sys.exit(main())
