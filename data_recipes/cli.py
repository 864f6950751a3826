"""`python -m data_recipes`: list corpora, build shards, prepare a training format, merge `--part`
manifests, validate, stats, ids."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from pathlib import Path

from clap_lightning.data import schema
from clap_lightning.registry import RegistryError
from data_recipes import base, checks, prepare, writer
from data_recipes.base import RecipeError

# Bad input, reported in one line: the recipes' and the shard format's own errors, an unknown
# corpus or option, and missing or unreadable inputs. Anything else is a bug and keeps its traceback.
INPUT_ERRORS = (RecipeError, schema.ShardFormatError, RegistryError, FileNotFoundError, NotADirectoryError,
                IsADirectoryError, PermissionError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RecipeError(f"bad option '{pair}': expected KEY=VALUE, e.g. -o train_per_class=20")
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
        flac_level=args.flac_level,
        samples_per_shard=args.samples_per_shard or recipe.default_samples_per_shard,
        max_shard_bytes=writer.parse_size(args.max_shard_bytes) if args.max_shard_bytes else None,
        workers=args.workers,
        part=writer.parse_part(args.part) if args.part else None,
        show_progress=not args.no_progress,
        exclude=schema.read_exclude_file(args.exclude) if args.exclude else frozenset(),
    )
    manifests = writer.build_corpus(recipe, args.out, args.src, args.split, config)
    for split, m in manifests.items():
        part = f" (part {m['part']['index']}/{m['part']['count']})" if m["part"] else ""
        skipped = sum(m["skipped"].values())
        excluded = f", {m['excluded']} excluded" if args.exclude else ""
        print(f"{recipe.name}/{split}{part}: {m['num_samples']} clips, {m['hours']:.3f} h, "
              f"{len(m['shards'])} shards{excluded}, {skipped} skipped {m['skipped'] or ''}".rstrip())


def cmd_prepare(args: argparse.Namespace) -> None:
    part = writer.parse_part(args.part) if args.part else None
    for m in prepare.prepare(
        args.src, args.out, args.format, args.model_config, part, args.workers, not args.no_progress
    ):
        where = f" (part {m['part']['index']}/{m['part']['count']})" if m["part"] else ""
        print(f"{m['source']}/{m['split']}{where} -> {args.format}: {m['num_samples']} clips, {m['hours']:.3f} h, "
              f"{len(m['shards'])} shards, {sum(m['skipped'].values())} skipped {m['skipped'] or ''}".rstrip())


def cmd_merge(args: argparse.Namespace) -> None:
    m = writer.merge_parts(args.out, args.name, args.split)
    print(f"{args.name}/{args.split}: merged {len(m['shards'])} shards, {m['num_samples']} clips, {m['hours']:.3f} h")


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for directory in checks.find_split_dirs(args.out):
        report = checks.validate_split(directory)
        status = "ok" if not report.problem_count else f"{report.problem_count} problem(s)"
        print(f"{directory}: {report.samples} clips, {report.seconds / 3600:.3f} h decoded: {status}")
        for problem in report.problems:
            print(f"  - {problem}")
        bad += bool(report.problem_count)
    print(f"validate: {bad} split(s) with problems" if bad else "validate: all splits ok")
    return 1 if bad else 0


def cmd_ids(args: argparse.Namespace) -> None:
    """Print the cross-corpus ids of one split's clips: the leakage list other corpora are built with."""
    recipe = base.build_recipe(args.name, _parse_options(args.option))
    src = Path(args.src) if args.src else None
    items = [item for item in recipe.items(src, args.split) if recipe.match_ids(item)]
    print(f"# {recipe.name} {args.split}: {len(items)} clips (python -m data_recipes ids)")
    for item in items:
        ids = recipe.match_ids(item)
        for match_id in ids[1:] or ids[:1]:  # cross-corpus ids; the stable id where there are none
            print(match_id)


def cmd_stats(args: argparse.Namespace) -> None:
    stats = [checks.split_stats(d) for d in checks.find_split_dirs(args.out)]
    print(
        f"{'split':32s} {'clips':>8s} {'hours':>9s} {'capt/clip':>9s} {'median s':>9s} {'labels':>7s} {'excluded':>8s}"
    )
    for s in stats:
        print(f"{s['split']:32s} {s['clips']:8d} {s['hours']:9.3f} {s['captions_per_clip']['mean']:9.2f} "
              f"{s['duration_s']['median']:9.2f} {s['distinct_labels']:7d} {s['excluded']:8d}")
    total = sum(s["clips"] for s in stats), sum(s["hours"] for s in stats)
    print(f"{'total':32s} {total[0]:8d} {total[1]:9.3f}")
    png = Path(args.png) if args.png else Path(args.out) / "durations.png"
    checks.plot_durations(stats, png)
    print(f"duration histogram: {png}")
    if args.json:
        writer.write_json_atomic(Path(args.json), [{k: v for k, v in s.items() if k != "durations"} for s in stats])


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
    build.add_argument(
        "--flac-level",
        type=int,
        default=writer.DEFAULT_FLAC_LEVEL,
        choices=range(9),
        metavar="0-8",
        help="FLAC compression level (default %(default)s; 0 decodes ~7-9%% faster for ~1-4%% more bytes)",
    )
    build.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    build.add_argument("--samples-per-shard", type=int, help="clips per shard (default: the recipe's)")
    build.add_argument("--max-shard-bytes", help="also cut shards by estimated size, e.g. 1G")
    build.add_argument("--part", help="i/n: build only shards with index %% n == i (SLURM arrays)")
    build.add_argument("-o", "--option", action="append", default=[], help="recipe option KEY=VALUE (repeatable)")
    build.add_argument("--exclude", help="file of ids/keys to leave out (evaluation sets): one per line or a json list")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=cmd_build)

    prep = sub.add_parser("prepare", help="convert archival shards into a training format (docs/data.md)")
    prep.add_argument("src", help="archival shards: a split directory with manifest.json, or a root of them")
    prep.add_argument("--out", required=True, help="output root; shards go to OUT/SOURCE/SPLIT/ under the same names")
    prep.add_argument("--format", default="logmel", choices=prepare.FORMATS,
                      help="logmel: fp16 log-mel features (default); pcm16: 16-bit WAV at the model rate")
    prep.add_argument("--model-config", required=True,
                      help="model YAML whose front end the features are made for, e.g. configs/model/msclap_2023.yaml")
    prep.add_argument("--part", help="i/n: convert only shards with index %% n == i (SLURM arrays; then `merge`)")
    prep.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_prepare)

    merge = sub.add_parser("merge", help="merge the --part manifests of one split")
    merge.add_argument("out", help="output root given to build")
    merge.add_argument("name", help="corpus name")
    merge.add_argument("split", help="split name")
    merge.set_defaults(func=cmd_merge)

    validate = sub.add_parser("validate", help="decode every clip and check shards against their manifests")
    validate.add_argument("out", help="output root given to build, or one split directory")
    validate.set_defaults(func=cmd_validate)

    ids = sub.add_parser("ids", help="print a split's cross-corpus ids (youtube:, freesound:, ...) for --exclude")
    ids.add_argument("name", help="corpus name (see `list`)")
    ids.add_argument("--src", help="directory of the downloaded corpus")
    ids.add_argument("--split", required=True, help="split whose clips other corpora must leave out, e.g. test")
    ids.add_argument("-o", "--option", action="append", default=[], help="recipe option KEY=VALUE (repeatable)")
    ids.set_defaults(func=cmd_ids)

    stats = sub.add_parser("stats", help="clips, hours, captions per clip and a duration histogram")
    stats.add_argument("out", help="output root given to build, or one split directory")
    stats.add_argument("--png", help="histogram path (default OUT/durations.png)")
    stats.add_argument("--json", help="also write the figures to this json file")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        code = args.func(args)
    except (*INPUT_ERRORS, writer.WorkerDied) as err:
        lines = str(err).strip().splitlines()
        print(f"error: {lines[0] if lines else type(err).__name__}", file=sys.stderr)
        return 2 if not isinstance(err, writer.WorkerDied) else 1
    return code or 0
