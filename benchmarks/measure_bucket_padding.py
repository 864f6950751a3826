"""Measure the padding in training batches under `data.pad_mode: none`, per `data.bucket_batches`.

Every row draws the same batches of the demo config's training loader (batch 64, 2.04-s clips
at 16 kHz, seed 0) from a demo build; only the pool size differs. A batch is cut to its
longest clip, so its padding is what its shorter clips leave of that length. Printed: the mean
over batches of (padded samples / samples in the batch); "of all", the padded samples over all
batches' samples (long batches weigh more); and the mean cut length in seconds (what the front
end and encoder pay for).
Build a corpus of short clips first, as for `compare_padding.py`:

    python -m data_recipes build demo --out /tmp/short --sample-rate 16000 --workers 2 \\
        -o min_duration=0.3 -o max_duration=0.8
    python benchmarks/measure_bucket_padding.py --data /tmp/short/demo

Prints a table; asserts nothing. No model is built and nothing is trained.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "experiment" / "demo.yaml"


def measure(data: Path, bucket_batches: int, batches: int, seed: int, workers: int) -> dict:
    """Padding fraction and cut length of the first `batches` training batches with pools of `bucket_batches`."""
    from clap_lightning.config import ExperimentConfig, load_config
    from clap_lightning.lit.datamodule import ClapDataModule

    config = load_config(ExperimentConfig, DEMO, [
        f"data.train={data / 'train'}", "data.val=''", "data.pad_mode=none", f"data.bucket_batches={bucket_batches}",
        f"data.seed={seed}", f"seed={seed}", f"data.num_workers={workers}",
        f"data.epoch_samples={batches * 64}"])
    module = ClapDataModule.for_pretraining(config)
    module.setup()
    fractions, seconds, real, total = [], [], 0.0, 0
    start = time.perf_counter()
    for batch in module.train_dataloader():
        lengths = batch["audio_length"].double()
        fractions.append(1.0 - float(lengths.sum()) / batch["audio"].numel())
        real, total = real + float(lengths.sum()), total + batch["audio"].numel()
        seconds.append(batch["audio"].shape[1] / config.model.sample_rate)
    elapsed = time.perf_counter() - start
    return {"pool": bucket_batches, "batches": len(fractions), "padding": sum(fractions) / len(fractions),
            "pooled": 1.0 - real / total,
            "seconds": sum(seconds) / len(seconds), "elapsed": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a demo build: holds train/")
    parser.add_argument("--pools", default="0,4,8,16", help="comma-separated data.bucket_batches values")
    parser.add_argument("--batches", type=int, default=48, help="training batches of 64 per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="loader workers")
    args = parser.parse_args()
    rows = [measure(args.data, int(p), args.batches, args.seed, args.workers) for p in args.pools.split(",") if p]
    print(f"\n{rows[0]['batches']} batches of 64, seed {args.seed}, {args.data}")
    print(f"{'bucket_batches':>14} {'padding':>8} {'of all':>7} {'batch s':>8} {'loader s':>9}")
    for r in rows:
        print(f"{r['pool']:>14} {r['padding']:>8.1%} {r['pooled']:>7.1%} {r['seconds']:>8.3f} {r['elapsed']:>9.1f}")


if __name__ == "__main__":
    main()
