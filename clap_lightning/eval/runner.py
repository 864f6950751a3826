"""Run evaluations from a checkpoint: build the loader from its stored config, embed, score, report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import torch

from clap_lightning.eval.zeroshot import (ZeroShotResult, classify, collect_classes, embed_audio_batches,
                                          embed_class_prompts, write_zeroshot_report)
from clap_lightning.lit.datamodule import ClapDataModule
from clap_lightning.lit.run import load_pretraining


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
