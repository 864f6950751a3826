"""`clap-lightning report RUN_DIR`: one self-contained HTML page about a run (see eval/run_report.py)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder (holds config.yaml and logs/)")
    parser.add_argument("--out", default=None, help="page to write (default: RUN_DIR/report.html)")


def run(args: argparse.Namespace) -> int:
    """Write the page; prints its path."""
    from clap_lightning.eval.run_report import write_run_report

    print(f"report: {write_run_report(args.run_dir, args.out)}")
    return 0
