"""Loader throughput per core: 10 s 48 kHz FLAC shards -> 7 s clips at 44.1 kHz, tokenized, batched.

Three paths over the same clips, measured in one run on one thread (num_workers=0):

- raw decode: `soundfile` decodes every whole file from bytes (the floor any loader pays);
- msclap-style: decode the whole file, resample all of it, then crop 7 s, as msclap's
  `CLAPWrapper.read_audio` + `load_audio_into_tensor` do (msclap builds a new
  `torchaudio.transforms.Resample` per file; a variant with the kernel cached is shown too);
- full loader: `ClapStream` in training mode (tar reading, seek to a random 7 s crop, decode only
  it, resample only it, tokenize a caption, batch of 8).

Usage: `OMP_NUM_THREADS=1 python benchmarks/bench_loader.py [--clips 96] [--repeats 3] [--flac-level 0]`.
Targets (issue 5): full loader >= 0.8x raw decode and >= 1.5x msclap-style. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from clap_lightning.data.pipeline import ClapStream, ClipDecoder, Collate
from clap_lightning.data.stream import read_tar_samples
from clap_lightning.encoders.registry import build_caption_tokenizer
from data_recipes.writer import DEFAULT_FLAC_LEVEL, encode_flac

FILE_RATE, MODEL_RATE, FILE_SECONDS, CLIP_SECONDS, BATCH = 48000, 44100, 10.0, 7.0, 8


def synth_clip(rng: np.random.Generator) -> np.ndarray:
    """Ten seconds of tones plus quiet noise (compresses like real recordings, unlike white noise)."""
    t = np.arange(int(FILE_RATE * FILE_SECONDS)) / FILE_RATE
    audio = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(80, 4000, size=3))
    audio = audio * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t)) + 0.02 * rng.standard_normal(t.size)
    return np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)


def write_shards(directory: Path, clips: int, per_shard: int = 32, flac_level: int = DEFAULT_FLAC_LEVEL) -> list[str]:
    import tarfile

    rng = np.random.default_rng(0)
    urls = []
    for start in range(0, clips, per_shard):
        path = directory / f"bench-{start // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(start + per_shard, clips)):
                meta = (f'{{"text": ["a synthetic chord number {i}", "tones and noise"], "source": "bench", '
                        f'"id": "{i}", "split": "train", "duration": {FILE_SECONDS}, "sample_rate": {FILE_RATE}}}')
                for name, data in ((f"bench-{i}.flac", encode_flac(synth_clip(rng), FILE_RATE, flac_level)),
                                   (f"bench-{i}.json", meta.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    return urls


def raw_decode(flacs: list[bytes]) -> None:
    for data in flacs:
        sf.read(io.BytesIO(data), dtype="float32")


def msclap_style(flacs: list[bytes], cache_kernel: bool) -> None:
    rng = np.random.default_rng(0)
    cached = torchaudio.transforms.Resample(FILE_RATE, MODEL_RATE)
    clip = int(MODEL_RATE * CLIP_SECONDS)
    for data in flacs:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32")
        resample = cached if cache_kernel else torchaudio.transforms.Resample(rate, MODEL_RATE)
        audio = resample(torch.from_numpy(audio))
        start = int(rng.integers(0, audio.shape[0] - clip + 1))
        audio[start:start + clip]


def full_loader(urls: list[str], clips: int, tokenizer) -> None:
    decoder = ClipDecoder(MODEL_RATE, int(MODEL_RATE * CLIP_SECONDS), "repeat", is_train=True)
    stream = ClapStream([urls], decoder, Collate(tokenizer), BATCH, is_train=True,
                        batches_per_worker=clips // BATCH, shuffle_buffer=0)
    for batch in stream:
        assert batch["audio"].shape == (BATCH, int(MODEL_RATE * CLIP_SECONDS))


def best_rates(paths: dict, clips: int, repeats: int) -> dict[str, float]:
    """Clips per second of each path, best of `repeats` rounds that alternate the paths.

    The machine may be shared: alternating spreads any disturbance over every path, and the
    best round is the least disturbed one.
    """
    best = {name: float("inf") for name in paths}
    for fn in paths.values():
        fn()  # warm-up: page cache, kernels, tokenizer
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: clips / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flac-level", type=int, default=DEFAULT_FLAC_LEVEL, help="FLAC level of the shards (data_recipes build --flac-level)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_caption_tokenizer("gpt2", {"tokenizer": "builtin:tiny-bpe", "max_length": 32})
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), args.clips, flac_level=args.flac_level)
        flacs = [s["flac"] for url in urls for s in read_tar_samples(url, Counter())]
        rows = list(best_rates({
            "raw soundfile decode (whole file)": lambda: raw_decode(flacs),
            "msclap-style (decode all, new Resample, crop)": lambda: msclap_style(flacs, cache_kernel=False),
            "msclap-style, kernel cached": lambda: msclap_style(flacs, cache_kernel=True),
            "full loader (seek+crop, resample 7 s, tokenize, batch)": lambda: full_loader(urls, args.clips, tokenizer),
        }, args.clips, args.repeats).items())
    loader = rows[-1][1]
    print(f"{args.clips} clips of {FILE_SECONDS:.0f} s at {FILE_RATE} Hz -> {CLIP_SECONDS:.0f} s at {MODEL_RATE} Hz, "
          f"FLAC level {args.flac_level}, 1 thread, best of {args.repeats}")
    print(f"{'path':58s} {'clips/s/core':>12s} {'loader / path':>14s}")
    for name, rate in rows:
        print(f"{name:58s} {rate:12.1f} {loader / rate:13.2f}x")
    print(f"targets: loader/raw >= 0.80 (got {loader / rows[0][1]:.2f}), loader/msclap-style >= 1.50 "
          f"(got {loader / rows[1][1]:.2f}; {loader / rows[2][1]:.2f} against the cached-kernel variant)")


if __name__ == "__main__":
    main()
