"""`clap-lightning finetune --checkpoint C --data ROOT --task esc50`: supervised fine-tuning or a linear probe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a clap-lightning checkpoint (trained or converted)")
    parser.add_argument("--data", required=True, help="root holding <source>/<split>/ shard folders")
    parser.add_argument("--task", required=True, help="a single-label registry task, e.g. esc50 (`eval` lists them)")
    parser.add_argument("--probe", action="store_true",
                        help="a linear probe on frozen embeddings instead of fine-tuning the audio encoder")
    parser.add_argument("--folds", default=None, help="comma-separated folds to hold out in turn (default: all)")
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning passes over the training clips")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the pretrained encoder")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the new linear head")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per step")
    parser.add_argument("--num-workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--out", default=None, help="where results.json goes (default: <run_dir>/finetune/<task>)")


def run(args: argparse.Namespace) -> int:
    """Fine-tune (or probe) and print the accuracy per held-out fold and their mean."""
    from clap_lightning.errors import ConfigError
    from clap_lightning.eval.tasks import get_task

    if args.epochs < 1 or args.batch_size < 1 or args.num_workers < 0 or args.lr <= 0 or args.head_lr <= 0:
        raise ConfigError("--epochs, --batch-size, --lr and --head-lr must be positive and --num-workers >= 0")
    try:
        spec = get_task(args.task)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if spec.kind != "single_label" or not spec.classes:
        raise ConfigError(f"finetune needs a single-label task with a class list; '{spec.name}' is {spec.kind}")
    scores = run_probe(args, spec) if args.probe else run_finetune(args, spec)
    for fold, acc in scores.items():
        print(f"{spec.name} fold {fold}: accuracy {acc:.4f}")
    mean = sum(scores.values()) / len(scores)
    print(
        f"{spec.name}: mean accuracy {mean:.4f} over {len(scores)} fold(s) ({'probe' if args.probe else 'fine-tuned'})"
    )
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"task": spec.name, "mode": "probe" if args.probe else "finetune",
                                                      "folds": {str(k): v for k, v in scores.items()},
                                                      "mean": mean}, indent=2) + "\n")
        print(f"wrote {out / 'results.json'}")
    return 0


def run_finetune(args: argparse.Namespace, spec) -> dict:
    from clap_lightning.eval.embed import ClipSettings
    from clap_lightning.lit.finetune import FineTuneConfig, finetune_task
    from clap_lightning.lit.run import load_pretraining

    module = load_pretraining(args.checkpoint)
    model_config = module.config.model
    config = FineTuneConfig(lr=args.lr, head_lr=args.head_lr, max_epochs=args.epochs, batch_size=args.batch_size,
                            num_workers=args.num_workers, seed=module.config.seed)
    clip = ClipSettings(model_config.sample_rate, model_config.clip_samples, module.config.data.pad_mode)
    folds = [f.strip() for f in args.folds.split(",")] if args.folds else None
    return finetune_task(module.model.audio_encoder, spec, clip, args.data, config, folds)


def run_probe(args: argparse.Namespace, spec) -> dict:
    from clap_lightning.commands.eval import run_eval
    from clap_lightning.errors import ConfigError
    from clap_lightning.eval.suite import EvalOptions

    options = EvalOptions(batch_size=args.batch_size, num_workers=args.num_workers, linear_probe=True)
    results, _, _ = run_eval(args.checkpoint, spec.name, args.data, args.out, None, options)
    acc = results[0].metrics.get("probe_acc")
    if acc is None:
        raise ConfigError(
            f"{spec.name}: the linear probe gave no result ({results[0].status or 'no train split or folds'})"
        )
    return {"cross-validated" if spec.fold_field else "test": acc}
