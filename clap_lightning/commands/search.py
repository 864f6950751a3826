"""`clap-lightning search --index DIR "a dog barking in the rain" -k 10`: nearest clips of an embedding index."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="a text query")
    parser.add_argument("--index", required=True, help="an index directory written by `clap-lightning embed`")
    parser.add_argument("-k", type=int, default=10, help="how many clips to return")
    parser.add_argument("--checkpoint", default=None, help="model to embed the query with (default: the index's)")


def run(args: argparse.Namespace) -> int:
    """Print the k best clips: rank, cosine, id, path (and the best window's time span)."""
    from clap_lightning.errors import ConfigError
    from clap_lightning.eval.index import load_index, search_index
    from clap_lightning.models.clap import CLAP

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    index = load_index(args.index)
    model = CLAP.from_checkpoint(args.checkpoint or index.settings["checkpoint"])
    for rank, hit in enumerate(search_index(index, model.embed_text([args.query])[0], args.k), 1):
        where = f"  [{hit.start:.2f}-{hit.end:.2f} s]" if hit.start is not None else ""
        print(f"{rank:3d}  {hit.score:.4f}  {hit.id}  {hit.path}{where}")
    return 0
