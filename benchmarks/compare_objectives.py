"""Held-out zero-shot accuracy of the demo with each `objective.false_negatives` mode, same steps and seeds.

Trains `configs/experiment/demo.yaml` once per (mode, seed) with `seed=N data.seed=N`, exactly
as `make demo SEED=N` does but in its own run directory, then classifies the held-out test
split zero-shot; the three modes share every other setting, so the table isolates the loss.
Demo captions come from class templates and every clip carries its class in `labels`, so in
a batch of 64 from 14 classes each pair meets ~3.6 clips of its own class among its negatives.

    python -m data_recipes build demo --out /tmp/demo-shards --sample-rate 16000 --workers 2
    python benchmarks/compare_objectives.py --data /tmp/demo-shards/demo --seeds 0 1 2 [--steps 1000] [key=value ...]

Prints one row per run (accuracy, fit time, load average) and a table of accuracy per mode and
seed with the mean; asserts nothing. Extra `key=value` arguments override the config for every run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "experiment" / "demo.yaml"
MODES = ("keep", "mask", "multi_positive")
ACCURACY = re.compile(r"zero-shot accuracy: ([0-9.]+)")


def run_cli(*args: str) -> str:
    """Run `clap-lightning ARGS` with this repository first on the path; return its stdout or exit on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "clap_lightning.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: clap-lightning {args[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def train_and_score(mode: str, seed: int, args: argparse.Namespace) -> dict:
    """Fit the demo with one mode and seed, then zero-shot classify the test split."""
    run_dir = Path(args.run_root) / f"{mode}-seed{seed}"
    data = Path(args.data)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    run_cli("fit", "--config", str(DEMO), f"run_dir={run_dir}", f"seed={seed}", f"data.seed={seed}",
            f"objective.false_negatives={mode}", f"trainer.max_steps={args.steps}", "trainer.enable_progress_bar=false",
            f"data.train={data / 'train'}", f"data.val={data / 'valid'}", f"data.test={data / 'test'}", *args.overrides)
    fit_s = time.perf_counter() - start
    out = run_cli("zeroshot", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--data",
                  str(data / "test"), "--out", str(run_dir / "zeroshot"))
    accuracy = float(ACCURACY.search(out).group(1))
    return {"mode": mode, "seed": seed, "accuracy": accuracy, "fit_s": fit_s,
            "load": (load_before + os.getloadavg()[0]) / 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the demo corpus folder holding train/, valid/, test/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (the demo: 1000)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--run-root", default="runs/compare_objectives", help="one run directory per (mode, seed)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    args = parser.parse_args()
    print(f"demo config, {args.steps} steps, seeds {args.seeds}, overrides {args.overrides or 'none'}; "
          f"{os.cpu_count()} CPUs")
    rows = []
    for seed in args.seeds:
        for mode in args.modes:
            row = train_and_score(mode, seed, args)
            rows.append(row)
            print(f"{mode:>15} seed {seed}: accuracy {row['accuracy']:.3f}  fit {row['fit_s']:.0f} s "
                  f"({row['fit_s'] / args.steps:.2f} s/step, load average {row['load']:.1f})", flush=True)
    print(f"\n| false_negatives | {' | '.join(f'seed {s}' for s in args.seeds)} | mean |")
    print(f"|---|{'---|' * len(args.seeds)}---|")
    for mode in args.modes:
        scores = [r["accuracy"] for r in rows if r["mode"] == mode]
        print(f"| {mode} | {' | '.join(f'{a:.3f}' for a in scores)} | {sum(scores) / len(scores):.3f} |")


if __name__ == "__main__":
    main()
