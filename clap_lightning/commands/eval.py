"""`clap-lightning eval`: score a checkpoint on registry tasks and write a table against the paper.

    clap-lightning eval --checkpoint runs/demo/checkpoints/last.ckpt --tasks esc50,clotho --data data/shards

Task shards are read from `<data>/<task.source>/<task.split>/`; audio embeddings are cached
per split and checkpoint under `--cache` (default `<out>/cache`), so a rerun only re-scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from clap_lightning.errors import ConfigError
from clap_lightning.outputs import check_writable

if TYPE_CHECKING:
    from clap_lightning.eval.suite import EvalOptions, TaskEvaluator, TaskResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `eval` options to a (sub)parser."""
    parser.add_argument("--checkpoint", required=True, help="a clap-lightning checkpoint")
    parser.add_argument("--tasks", default="all",
                        help="'all', a group (zero_shot, retrieval, nsynth, clotho, ...) or a comma-separated list")
    parser.add_argument("--data", required=True, help="root holding <source>/<split>/ shard folders")
    parser.add_argument("--out", default=None, help="report directory (default: <run_dir>/eval)")
    parser.add_argument("--cache", default=None, help="embedding cache directory (default: <out>/cache; 'none' = off)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per forward pass")
    parser.add_argument("--long-audio", choices=("first", "windows"), default="first",
                        help="first: each clip's first clip_seconds; windows: every window of it, pooled")
    parser.add_argument("--hop", type=float, default=None, help="window hop in seconds (default: half a clip)")
    parser.add_argument("--num-workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--ensemble-prompts", action="store_true",
                        help="average the embeddings of every prompt template of a task (default: the first)")
    parser.add_argument("--linear-probe", action="store_true",
                        help="also report a logistic-regression probe on single-label tasks (folds or train split)")
    parser.add_argument(
        "--captioner",
        default=None,
        help="a captioning checkpoint trained on this CLAP's audio embeddings: scores the captioning "
        "tasks (CIDEr-D, BLEU-4, ROUGE-L; not SPIDEr, which needs SPICE); without it they are skipped",
    )


def run_eval(checkpoint: str, tasks: str, data: str, out: Optional[str] = None, cache: Optional[str] = None,
             options: Optional[EvalOptions] = None, long_audio: str = "first",
             hop_seconds: Optional[float] = None,
             captioner: Optional[str] = None) -> tuple[list[TaskResult], list[Path], TaskEvaluator]:
    """Evaluate `checkpoint` on `tasks`; returns the results, the report files and the evaluator (for counts).

    `captioner` (a captioning checkpoint) scores the captioning tasks with its own decoding settings.

    Raises:
        ConfigError: an unknown task name (the message lists the known ones).
        CheckpointError: the checkpoint is missing or unreadable.
        OutputError: the report or cache folder cannot be written.
    """
    import torch

    from clap_lightning.eval.embed import ClipSettings, EmbeddingCache, checkpoint_digest
    from clap_lightning.eval.report import write_eval_report
    from clap_lightning.eval.suite import TaskEvaluator
    from clap_lightning.eval.tasks import resolve_tasks
    from clap_lightning.lit.run import load_pretraining

    try:
        specs = resolve_tasks(tasks)  # before the checkpoint is read: a typo fails at once
    except ValueError as err:
        raise ConfigError(str(err)) from None
    module = load_pretraining(checkpoint)
    config = module.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = module.model.to(device).eval()
    out_dir = Path(out) if out else Path(config.run_dir) / "eval"
    cache_dir = None if cache == "none" else Path(cache) if cache else out_dir / "cache"
    check_writable(out_dir, *([cache_dir] if cache_dir else []))  # before the embedding, not at the report
    clip = ClipSettings(config.model.sample_rate, config.model.clip_samples, config.data.pad_mode, long_audio,
                        hop_seconds)
    digest = checkpoint_digest(checkpoint) + ("" if long_audio == "first" else f"-windows{clip.hop_samples}")
    caption_model, decoding = _load_captioner(captioner, checkpoint, model, device) if captioner else (None, None)
    evaluator = TaskEvaluator(model, model.build_tokenizer(), clip, data, EmbeddingCache(cache_dir, digest), options,
                              caption_model, decoding)
    results = evaluator.evaluate_all(specs)
    paths = write_eval_report(results, out_dir, f"CLAP evaluation of {Path(checkpoint).name} vs the paper")
    return results, paths, evaluator


def _load_captioner(path: str, checkpoint: str, model, device: str):
    """The captioner of `path` on `device` and its decoding settings; refuses one sized for another CLAP."""
    import logging

    from clap_lightning.lit.captioning import load_captioner

    captioner, config = load_captioner(path)
    if captioner.config.mapper.d_audio != model.config.d_proj:
        raise ConfigError(f"captioner {path} reads {captioner.config.mapper.d_audio}-d audio embeddings; "
                          f"{checkpoint} makes {model.config.d_proj}-d ones")
    if config.clap_checkpoint and Path(config.clap_checkpoint).resolve() != Path(checkpoint).resolve():
        logging.getLogger(__name__).warning("captioner %s was trained on the embeddings of %s, not of %s",
                                            path, config.clap_checkpoint, checkpoint)
    return captioner.to(device).eval(), config.decoding


def run(args: argparse.Namespace) -> int:
    """Run `clap-lightning eval` from parsed arguments; prints the report paths and a summary."""
    from clap_lightning.data.stream import format_skipped
    from clap_lightning.eval.suite import EvalOptions

    options = EvalOptions(batch_size=args.batch_size, num_workers=args.num_workers,
                          ensemble_prompts=args.ensemble_prompts, linear_probe=args.linear_probe)
    results, paths, evaluator = run_eval(args.checkpoint, args.tasks, args.data, args.out, args.cache, options,
                                         args.long_audio, args.hop, args.captioner)
    for result in results:
        spec = result.spec
        shown = result.status or "{} {:.4f}".format(*spec.headline(result.metrics))
        left_out = f" (left out: {format_skipped(result.left_out)})" if result.left_out else ""
        print(f"{spec.name}: {shown}{left_out}")
    print(f"audio embeddings: {evaluator.num_embedded} split(s) computed, {evaluator.num_from_cache} from cache")
    print(f"report: {', '.join(str(p) for p in paths)}")
    return 0
