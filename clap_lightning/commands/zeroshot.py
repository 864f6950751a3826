"""`clap-lightning zeroshot --checkpoint C --data SHARDS`: zero-shot classification of labelled shards.

A thin front of the evaluation suite: the shards are one single-label task (classes given or
found in the shards, the prompt given or the checkpoint's `zeroshot.prompt`), embedded and
scored by `TaskEvaluator` as `clap-lightning eval` scores a registry task, so both give the same
numbers. The report adds what a single task can show: per-class accuracy and the confusion matrix.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from clap_lightning.config import normalize_prompt
from clap_lightning.errors import ConfigError
from clap_lightning.outputs import check_writable

if TYPE_CHECKING:
    from clap_lightning.eval.suite import TaskResult
    from clap_lightning.eval.tasks import TaskSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a clap-lightning checkpoint")
    parser.add_argument("--data", required=True, help="labelled eval shards (split dir, brace pattern or list)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names or a file with one per line (default: labels found)")
    parser.add_argument("--prompt", default=None,
                        help="prompt template with one {} or {class}, default from the checkpoint's config")
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


def zeroshot_task(classes: Optional[Sequence[str]], prompt: str, label_field: str) -> TaskSpec:
    """The single-label task `zeroshot` scores: `classes` (None: those found in the shards) with one prompt."""
    from clap_lightning.eval.tasks import TaskSpec

    return TaskSpec(name="zeroshot", display_name="Zero-shot classification", kind="single_label", metric="acc",
                    source="zeroshot", split="data", protocol="the shards given to `clap-lightning zeroshot --data`",
                    classes=list(classes or []), classes_from="spec" if classes else "shards", prompts=[prompt],
                    label_field=label_field)


def run_zeroshot(
    checkpoint: str,
    data: str,
    classes: Optional[Sequence[str]] = None,
    prompt: Optional[str] = None,
    out_dir: Optional[str] = None,
    batch_size: int = 64,
    num_workers: int = 2,
) -> tuple[TaskResult, Path]:
    """Zero-shot classify the labelled shards `data` with the model in `checkpoint`; write the report.

    Raises:
        ConfigError: a prompt without one `{}`/`{class}` placeholder, a batch size below 1 or
            negative workers, before the checkpoint is read.
    """
    import torch

    from clap_lightning.data.sources import resolve_shards
    from clap_lightning.eval.embed import ClipSettings
    from clap_lightning.eval.suite import EvalOptions, TaskEvaluator
    from clap_lightning.eval.zeroshot import write_zeroshot_report
    from clap_lightning.lit.run import load_pretraining

    prompt = normalize_prompt(prompt, "--prompt") if prompt is not None else None
    if batch_size < 1 or num_workers < 0:
        flag, value, limit = ("--batch-size", batch_size, 1) if batch_size < 1 else ("--num-workers", num_workers, 0)
        raise ConfigError(f"{flag} must be >= {limit}, got {value}")
    module = load_pretraining(checkpoint)
    config = module.config
    out = Path(out_dir) if out_dir else Path(config.run_dir) / "zeroshot"
    check_writable(out)  # before minutes of embedding, not at the report
    urls = resolve_shards(data).urls
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = module.model.to(device).eval()
    spec = zeroshot_task(classes, prompt if prompt is not None else config.zeroshot.prompt, config.zeroshot.label_field)
    clip = ClipSettings(config.model.sample_rate, config.model.clip_samples, config.data.pad_mode)
    evaluator = TaskEvaluator(model, model.build_tokenizer(), clip, Path(data),
                              options=EvalOptions(batch_size=batch_size, num_workers=num_workers))
    result = evaluator.evaluate(spec, urls)
    write_zeroshot_report(result, out, f"Zero-shot classification ({spec.prompts[0].format('<class>')})")
    return result, out


def run(args: argparse.Namespace) -> int:
    result, out_dir = run_zeroshot(args.checkpoint, args.data, read_classes(args.classes), args.prompt,
                                   args.out, args.batch_size, args.num_workers)
    print(f"report: {out_dir}/results.md, {out_dir}/confusion.png")
    print(f"zero-shot accuracy: {result.metrics['acc']:.3f} on {result.num_clips} held-out clips, "
          f"{len(result.classes)} classes (chance {1 / len(result.classes):.3f})")
    return 0
