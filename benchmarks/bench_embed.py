"""`clap-lightning embed` against `embed_audio` in a Python loop, on the same files, in one run.

Writes the first N clips of the demo shards as FLAC files, then embeds them with the tiny model:

- loop: `model.embed_audio(path)` once per file (what a user writes without the command);
- embed: `build_index` over the folder (decoding in `--workers` processes, batches of `--batch-size`);
- kill -9: `clap-lightning embed` in a subprocess killed halfway, then rerun: the rows must number N.

Usage: `OMP_NUM_THREADS=1 python benchmarks/bench_embed.py [--data data/shards/demo/train] [--clips 2000]`.
Prints clips/s of each and the ratio. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from omegaconf import OmegaConf

from clap_lightning.config import ExperimentConfig, config_from, to_container
from clap_lightning.data.sources import resolve_shards
from clap_lightning.data.stream import read_tar_samples
from clap_lightning.eval.index import IndexSettings, build_index
from clap_lightning.models.clap import CLAP

ROOT = Path(__file__).resolve().parents[1]


def write_clips(spec: str, out: Path, count: int) -> list[Path]:
    paths, skipped = [], Counter()
    for url in resolve_shards(spec).urls:
        for sample in read_tar_samples(url, skipped):
            path = out / f"{sample['__key__']}.flac"
            path.write_bytes(sample["flac"])
            paths.append(path)
            if len(paths) == count:
                return paths
    return paths


def count_rows(index: Path) -> tuple[int, int]:
    rows = []
    for table in index.glob("part-[0-9]*[0-9].csv"):
        with table.open() as f:
            rows += [r["path"] for r in csv.DictReader(f)]
    return len(rows), len(set(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data/shards/demo/train"))
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = config_from(
        ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(ROOT / "configs/model/tiny.yaml"))}
    )
    model = CLAP(config.model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "lib").mkdir()
        paths = write_clips(args.data, tmp / "lib", args.clips)
        print(f"{len(paths)} clips from {args.data}; torch threads {torch.get_num_threads()}, "
              f"{args.workers} decode workers, batch {args.batch_size}")

        start = time.perf_counter()
        for path in paths:
            model.embed_audio(path)
        loop = len(paths) / (time.perf_counter() - start)

        settings = IndexSettings(str(tmp / "lib"), "none", "first", 1.0, 250)
        summary = build_index(model, settings, tmp / "index", args.batch_size, args.workers, progress=False)
        print(f"embed_audio loop : {loop:8.1f} clips/s")
        print(f"embed (index)    : {summary.clips_per_second:8.1f} clips/s  ({summary.clips_per_second / loop:.2f}x)")

        ckpt = tmp / "model.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                    "hyper_parameters": {"config": to_container(config)}}, ckpt)
        command = [sys.executable, "-m", "clap_lightning.cli", "embed", str(tmp / "lib"), "--checkpoint", str(ckpt),
                   "--out", str(tmp / "killed"), "--part-size", "100", "--num-workers", str(args.workers),
                   "--device", "cpu", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while count_rows(tmp / "killed")[0] < len(paths) // 2 and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = count_rows(tmp / "killed")[0]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        rows, unique = count_rows(tmp / "killed")
        print(f"kill -9 at {at_kill} rows, rerun: {rows} rows ({unique} distinct files) of {len(paths)}")


if __name__ == "__main__":
    main()
