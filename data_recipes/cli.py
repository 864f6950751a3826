"""`python -m data_recipes`: list corpora, build shards, merge `--part` manifests."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from data_recipes import base, writer


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"bad option '{pair}': expected KEY=VALUE, e.g. -o train_per_class=20")
        options[key.strip()] = value.strip()
    return options


def cmd_list(args: argparse.Namespace) -> None:
    for name in base.recipe_names():
        cls = base.get_recipe_class(name)
        src = "needs --src" if cls.needs_src else "no --src"
        print(f"{name:12s} v{cls.version}  splits: {','.join(cls.splits)}  ({src})  {cls.summary()}")


def cmd_build(args: argparse.Namespace) -> None:
    recipe = base.build_recipe(args.name, _parse_options(args.option))
    config = writer.WriterConfig(
        sample_rate=args.sample_rate,
        samples_per_shard=args.samples_per_shard or recipe.default_samples_per_shard,
        max_shard_bytes=writer.parse_size(args.max_shard_bytes) if args.max_shard_bytes else None,
        workers=args.workers,
        part=writer.parse_part(args.part) if args.part else None,
        show_progress=not args.no_progress,
    )
    manifests = writer.build_corpus(recipe, args.out, args.src, args.split, config)
    for split, m in manifests.items():
        part = f" (part {m['part']['index']}/{m['part']['count']})" if m["part"] else ""
        skipped = sum(m["skipped"].values())
        print(f"{recipe.name}/{split}{part}: {m['num_samples']} clips, {m['hours']:.3f} h, "
              f"{len(m['shards'])} shards, {skipped} skipped {m['skipped'] or ''}".rstrip())


def cmd_merge(args: argparse.Namespace) -> None:
    m = writer.merge_parts(args.out, args.name, args.split)
    print(f"{args.name}/{args.split}: merged {len(m['shards'])} shards, {m['num_samples']} clips, {m['hours']:.3f} h")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m data_recipes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the known corpora").set_defaults(func=cmd_list)

    build = sub.add_parser("build", help="convert a corpus into WebDataset shards")
    build.add_argument("name", help="corpus name (see `list`)")
    build.add_argument("--out", required=True, help="output root; shards go to OUT/NAME/SPLIT/")
    build.add_argument("--src", help="directory of the downloaded corpus (not needed by 'demo')")
    build.add_argument("--split", action="append", help="split to build (repeatable; default: all)")
    build.add_argument("--sample-rate", type=int, default=44100, help="rate of the written FLAC (default 44100)")
    build.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    build.add_argument("--samples-per-shard", type=int, help="clips per shard (default: the recipe's)")
    build.add_argument("--max-shard-bytes", help="also cut shards by estimated size, e.g. 1G")
    build.add_argument("--part", help="i/n: build only shards with index %% n == i (SLURM arrays)")
    build.add_argument("-o", "--option", action="append", default=[], help="recipe option KEY=VALUE (repeatable)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=cmd_build)

    merge = sub.add_parser("merge", help="merge the --part manifests of one split")
    merge.add_argument("out", help="output root given to build")
    merge.add_argument("name", help="corpus name")
    merge.add_argument("split", help="split name")
    merge.set_defaults(func=cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, OSError, writer.WorkerDied) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2 if not isinstance(err, writer.WorkerDied) else 1
    return 0
