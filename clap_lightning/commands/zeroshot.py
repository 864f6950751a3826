"""`clap-lightning zeroshot --checkpoint C --data SHARDS`: zero-shot classification of labelled shards.

The loader is built from the checkpoint's stored config, with `--data` as its test split.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from clap_lightning.eval.zeroshot import ZeroShotResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a clap-lightning checkpoint")
    parser.add_argument("--data", required=True, help="labelled eval shards (split dir, brace pattern or list)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names or a file with one per line (default: labels found)")
    parser.add_argument("--prompt", default=None, help="prompt template, default from the checkpoint's config")
    parser.add_argument("--out", default=None, help="report directory (default: <run_dir>/zeroshot)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)


def read_classes(value: Optional[str]) -> Optional[list[str]]:
    """Class names from a file (one per line) or a comma-separated list; None when not given."""
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [c.strip() for c in value.split(",") if c.strip()]


def run_zeroshot(
    checkpoint: str,
    data: str,
    classes: Optional[Sequence[str]] = None,
    prompt: Optional[str] = None,
    out_dir: Optional[str] = None,
    batch_size: int = 64,
    num_workers: int = 2,
) -> tuple[ZeroShotResult, Path]:
    """Zero-shot classify the labelled shards `data` with the model in `checkpoint`."""
    import torch

    from clap_lightning.eval.zeroshot import (classify, collect_classes, embed_audio_batches, embed_class_prompts,
                                              write_zeroshot_report)
    from clap_lightning.lit.datamodule import ClapDataModule
    from clap_lightning.lit.run import load_pretraining

    module = load_pretraining(checkpoint)
    config = module.config
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, test=data, eval_batch_size=batch_size, num_workers=num_workers))
    datamodule = ClapDataModule(config)
    datamodule.setup("test")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = module.model.to(device)
    embedded = embed_audio_batches(model, datamodule.test_dataloader())
    classes = collect_classes(embedded, classes)
    prompt = prompt or config.zeroshot.prompt
    result = classify(embedded, embed_class_prompts(model, datamodule.tokenizer, classes, prompt), classes)
    out = Path(out_dir) if out_dir else Path(config.run_dir) / "zeroshot"
    write_zeroshot_report(result, out, f"Zero-shot classification ({prompt.format('<class>')})")
    return result, out


def run(args: argparse.Namespace) -> int:
    result, out_dir = run_zeroshot(args.checkpoint, args.data, read_classes(args.classes), args.prompt,
                                   args.out, args.batch_size, args.num_workers)
    print(f"report: {out_dir}/results.md, {out_dir}/confusion.png")
    print(f"zero-shot accuracy: {result.accuracy:.3f} on {result.num_clips} held-out clips, "
          f"{len(result.classes)} classes (chance {1 / len(result.classes):.3f})")
    return 0
