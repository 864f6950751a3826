"""Linear-probe a multi-task encoder against a single-task one trained for the same number of steps.

On the demo corpus, the multi-task encoder trains on `configs/multitask/demo3.yaml` (sound
class, pitch, background, duration) and the single-task encoder on the sound-class task alone
(standing in for "AudioSet only"), with the same model, batch, steps, optimiser and seed. A
randomly initialised encoder is the baseline measured in the same run. Each encoder embeds the
held-out clips (valid + test splits, never trained on) and a logistic-regression probe
(eval/linear_probe.py, fixed recipe) is scored by 5-fold cross-validation per task, including
attributes no encoder was trained on (loudness, length).

    python -m data_recipes build demo --out /tmp/x --sample-rate 16000 --workers 1 \\
        -o train_per_class=40 -o valid_per_class=10 -o test_per_class=10 -o min_duration=1.0 -o max_duration=3.0
    python benchmarks/compare_multitask_probe.py --data /tmp/x/demo --steps 300

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from collections import Counter
from pathlib import Path

import lightning as L
import torch

from clap_lightning.config import config_from, load_config
from clap_lightning.eval.embed import ClipSettings, build_eval_loader, embed_batches, split_urls
from clap_lightning.eval.linear_probe import cross_validate_probe
from clap_lightning.lit.multitask import fit_multitask
from clap_lightning.lit.multitask_config import MultiTaskConfig, head_specs, resolve_tasks
from clap_lightning.models.multitask import MultiTaskClassifier

REPO = Path(__file__).resolve().parents[1]
DEMO3 = REPO / "configs" / "multitask" / "demo3.yaml"
PROBE_TASKS = ("labels", "pitch", "background", "loudness", "length")  # json fields probed
FOLDS = 5


class AudioEmbedder(torch.nn.Module):
    """`encode_audio` = the bare audio encoder, as `embed_batches` expects."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def encode_audio(self, audio: torch.Tensor, audio_length: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(audio, audio_length)


def build_configs(data: Path, steps: int, batch: int, run_root: Path) -> dict[str, MultiTaskConfig]:
    """The multi-task and single-task runs: same everything but the task list; no validation."""
    base = load_config(
        MultiTaskConfig,
        DEMO3,
        [
            f"trainer.max_steps={steps}",
            f"data.global_batch_size={batch}",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=50",
            f"data.epoch_samples={steps * batch}",
        ],
    )
    tasks = [dataclasses.replace(t, shards=str(data / "train"), val="") for t in base.tasks]
    single = [t for t in tasks if t.name == "sound_class"]
    return {name: config_from(MultiTaskConfig, dataclasses.replace(base, tasks=chosen, name=name,
                                                                    run_dir=str(run_root / name)))
            for name, chosen in (("multi_task", tasks), ("single_task", single))}


def train_encoder(config: MultiTaskConfig) -> tuple[torch.nn.Module, float]:
    start = time.perf_counter()
    module = fit_multitask(config)
    return module.model.audio_encoder.eval(), time.perf_counter() - start


def random_encoder(config: MultiTaskConfig) -> torch.nn.Module:
    L.seed_everything(config.seed, verbose=False)
    resolved = resolve_tasks(config)
    return MultiTaskClassifier(resolved.model.audio_encoder, head_specs(resolved)).audio_encoder.eval()


def embed_held_out(encoder: torch.nn.Module, data: Path, config: MultiTaskConfig) -> tuple[torch.Tensor, list[dict]]:
    clip = ClipSettings(config.model.sample_rate, config.model.clip_samples, config.data.pad_mode)
    embs, metas = [], []
    for split in ("valid", "test"):
        embedded = embed_batches(AudioEmbedder(encoder), iter(build_eval_loader(split_urls(data / split), clip, 64, 0)))
        embs.append(embedded.audio_emb)
        metas += [{**m, "_key": k} for k, m in zip(embedded.keys, embedded.metas)]
    return torch.cat(embs), metas


def probe_targets(metas: list[dict], field: str) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """(rows having the field, class indices, folds by key hash, number of classes)."""
    values = [m.get(field) for m in metas]
    values = [v[0] if isinstance(v, list) else v for v in values]
    rows = [i for i, v in enumerate(values) if v is not None]
    classes = sorted({values[i] for i in rows})
    targets = torch.tensor([classes.index(values[i]) for i in rows])
    folds = [int(hashlib.sha1(metas[i]["_key"].encode()).hexdigest(), 16) % FOLDS for i in rows]
    return torch.tensor(rows), targets, folds, len(classes)


def probe_table(features: dict[str, torch.Tensor], metas: list[dict]) -> list[list[str]]:
    table = []
    for field in PROBE_TASKS:
        rows, targets, folds, n_classes = probe_targets(metas, field)
        chance = max(Counter(targets.tolist()).values()) / len(targets)
        cells = [f"{field} ({n_classes} cl., n={len(rows)})", f"{chance:.3f}"]
        for emb in features.values():
            cells.append(f"{cross_validate_probe(emb[rows], targets, folds, n_classes).mean_accuracy:.3f}")
        table.append(cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="demo corpus root holding train/valid/test")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps for each trained encoder")
    parser.add_argument("--batch", type=int, default=32, help="clips per step")
    parser.add_argument("--runs", type=Path, default=Path("runs/compare_multitask_probe"), help="checkpoints and logs")
    args = parser.parse_args()
    configs = build_configs(args.data, args.steps, args.batch, args.runs)
    encoders = {"random init": random_encoder(configs["single_task"])}
    seconds = {}
    for name in ("single_task", "multi_task"):
        encoders[name], seconds[name] = train_encoder(configs[name])
    features, metas = {}, []
    with torch.no_grad():
        for name, encoder in encoders.items():
            features[name], metas = embed_held_out(encoder, args.data, configs["multi_task"])
    print(f"\nLinear probe (5-fold CV over {len(metas)} held-out clips: valid + test), accuracy; "
          f"encoders trained {args.steps} steps x {args.batch} clips "
          + ", ".join(f"{k}: {v:.0f} s" for k, v in seconds.items()))
    header = ["task", "chance", "random init", "single-task (class)", "multi-task (demo3)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for cells in probe_table(features, metas):
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
