"""Shard writer throughput: 10 s WAV clips -> 48 kHz FLAC shards, clips per second per core.

Runs the real build path (`folder` recipe -> `writer.build_split`) with 1 and 2 worker
processes; the 1-worker figure is the baseline. A raw loop of soundfile WAV read + FLAC
encode (no tar, json or recipe) is printed as the ceiling for one core.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_shard_writer.py [--clips 48] [--source-rate 48000]

With --source-rate other than 48000 the writer also resamples (the loader's Resampler), as a corpus
at 44.1 kHz would need.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from data_recipes import base, writer

TARGET_RATE = 48000
SECONDS = 10.0


def make_clips(root: Path, count: int, rate: int) -> list[Path]:
    """Write `count` 10 s mono 16-bit WAVs: a tone with noise, so FLAC has real work."""
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * rate)) / rate
    paths = []
    for i in range(count):
        audio = 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / f"class{i % 4}" / f"clip{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def time_ceiling(paths: list[Path]) -> float:
    """Clips/s of read WAV -> int16 -> FLAC bytes, in this process."""
    start = time.perf_counter()
    for path in paths:
        audio, rate = sf.read(path, dtype="int16")
        writer.encode_flac(audio, rate)
    return len(paths) / (time.perf_counter() - start)


def time_writer(src: Path, out: Path, workers: int, clips: int) -> float:
    """Clips/s of a full build (tar shards + manifest) with `workers` processes."""
    recipe = base.build_recipe("folder", {"name": "bench", "test_fraction": 0.0})
    config = writer.WriterConfig(sample_rate=TARGET_RATE, samples_per_shard=max(1, clips // 8), workers=workers,
                                 show_progress=False)
    start = time.perf_counter()
    manifest = writer.build_split(recipe, "train", out, src, config)
    elapsed = time.perf_counter() - start
    assert manifest["num_samples"] == clips, manifest["skipped"]
    return clips / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48, help="number of 10 s clips")
    parser.add_argument("--source-rate", type=int, default=48000, help="rate of the source WAVs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_shard_writer_"))
    try:
        src = root / "src"
        paths = make_clips(src, args.clips, args.source_rate)
        time_ceiling(paths[:2])  # warm the page cache and libsndfile
        if args.source_rate != TARGET_RATE:  # import torch and build the resampling kernel outside the timing
            writer.prepare_audio(np.zeros(args.source_rate, np.float32), args.source_rate, TARGET_RATE)
        ceiling = time_ceiling(paths)
        one = time_writer(src, root / "out1", 1, args.clips)
        two = time_writer(src, root / "out2", 2, args.clips)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.clips} clips of {SECONDS:.0f} s, {args.source_rate} Hz WAV -> {TARGET_RATE} Hz FLAC shards; "
          f"{os.cpu_count()} CPUs visible")
    print(f"{'setup':42s} {'clips/s':>9s} {'clips/s/core':>13s} {'x realtime/core':>16s} {'vs 1 worker':>12s}")
    rows = (("ceiling: sf.read WAV + FLAC encode (1 core)", ceiling, 1), ("writer, 1 worker (baseline)", one, 1),
            ("writer, 2 workers", two, 2))
    for name, rate, cores in rows:
        print(f"{name:42s} {rate:9.2f} {rate / cores:13.2f} {rate / cores * SECONDS:16.0f} {rate / one:11.2f}x")


if __name__ == "__main__":
    main()
