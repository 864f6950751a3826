"""`clap-lightning embed INPUTS --checkpoint C --out DIR`: an embedding index of a sound library (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="?", default=None,
                        help="a folder of audio files, a .txt list of paths, a .csv with a 'path' column, or shards")
    parser.add_argument("--checkpoint", required=True, help="a clap-lightning checkpoint (trained or converted)")
    parser.add_argument("--out", required=True, help="index directory (a rerun with the same settings resumes)")
    parser.add_argument("--text", default=None, help="a file of captions/queries, one per line: writes text.npy/.csv")
    parser.add_argument("--long-audio", choices=("first", "windows"), default="first",
                        help="first: the first clip_seconds of each file; windows: overlapping windows, pooled")
    parser.add_argument("--hop", type=float, default=None, help="window hop in seconds (default: half a window)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips (windows) per forward pass")
    parser.add_argument("--num-workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--part-size", type=int, default=1000, help="files per output part (the unit of resuming)")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Embed the inputs (and/or texts); prints counts and clips/s."""
    import torch

    from clap_lightning.errors import ConfigError
    from clap_lightning.eval.index import IndexSettings, build_index, embed_texts_to
    from clap_lightning.models.clap import CLAP

    if args.inputs is None and args.text is None:
        raise ConfigError("embed needs audio inputs, --text, or both")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = CLAP.from_checkpoint(args.checkpoint, map_location=device)
    if args.text is not None:
        texts = [line.strip() for line in Path(args.text).read_text().splitlines() if line.strip()]
        print(f"embedded {embed_texts_to(model, texts, args.out)} texts into {args.out}/text.npy")
    if args.inputs is not None:
        hop = args.hop if args.hop is not None else model.config.clip_seconds / 2
        settings = IndexSettings(args.inputs, str(Path(args.checkpoint).resolve()), args.long_audio, hop,
                                 args.part_size)
        summary = build_index(model, settings, args.out, args.batch_size, args.num_workers, not args.no_progress)
        print(f"embedded {summary.clips} clips in {summary.seconds:.1f} s ({summary.clips_per_second:.1f} clips/s); "
              f"{summary.bad} bad files skipped (listed in {args.out}/part-*.bad.csv); "
              f"{summary.parts_skipped} parts already done")
    return 0
