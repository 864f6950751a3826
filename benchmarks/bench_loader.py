"""Loader throughput per core: the archival FLAC shards against the training formats, and msclap's path.

Two tables, each measured in one run on one thread (num_workers=0):

1. Formats (issue 17): 10-s clips at 44.1 kHz stored as FLAC level 5 (`build`'s default), FLAC
   level 0, 16-bit PCM WAV at the model rate and fp16 log-mel features (`prepare --format pcm16 /
   logmel`, the msclap 2023 front end), plain and in gzipped shards; each read by the full loader
   (`ClapStream` in training mode: tar reading, a random 7-s crop, decode, tokenize, batch of 8).
   Printed: clips/s per core, bytes per 7 s of audio, and the loader cores one GPU needs at
   4,000 pairs/s, issue 17's target step rate (not a measurement). Target: >= 500 clips/s per core
   at <= 250 KB per 7-s clip.
2. Decode paths (issue 5): 10 s 48 kHz FLAC shards -> 7 s clips at 44.1 kHz:
   - raw decode: `soundfile` decodes every whole file from bytes (the floor any loader pays);
   - msclap-style: decode the whole file, resample all of it, then crop 7 s, as msclap's
     `CLAPWrapper.read_audio` + `load_audio_into_tensor` do (msclap builds a new
     `torchaudio.transforms.Resample` per file; a variant with the kernel cached is shown too);
   - full loader: `ClapStream` in training mode (seek to a random 7 s crop, decode only it,
     resample only it, tokenize a caption, batch of 8).
   Targets (issue 5): full loader >= 0.8x raw decode and >= 1.5x msclap-style.

Usage: `OMP_NUM_THREADS=1 python benchmarks/bench_loader.py [--clips 96] [--repeats 5] [--table formats|decode|both]`.
Nothing is asserted; on a shared machine take the figures as a lower bound.
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

from clap_lightning.audio.frontend import frames_for
from clap_lightning.data.pipeline import ClapStream, ClipDecoder, Collate, LogMelDecoder
from clap_lightning.data.schema import JSON_EXT
from clap_lightning.data.stream import read_tar_samples
from clap_lightning.encoders.registry import build_caption_tokenizer
from data_recipes.prepare import SampleConverter, read_frontend
from data_recipes.writer import DEFAULT_FLAC_LEVEL, encode_flac

FILE_RATE, MODEL_RATE, FILE_SECONDS, CLIP_SECONDS, BATCH = 48000, 44100, 10.0, 7.0, 8
MODEL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "model" / "msclap_2023.yaml"
TARGET_PAIRS_PER_S = 4000  # issue 17's target GPU step rate on one H200 (a target, not a measurement)
TARGET_CLIPS_PER_CORE, TARGET_BYTES = 500, 250_000


def synth_clip(rng: np.random.Generator, rate: int = FILE_RATE) -> np.ndarray:
    """Ten seconds of tones plus quiet noise (compresses like real recordings, unlike white noise)."""
    t = np.arange(int(rate * FILE_SECONDS)) / rate
    audio = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(80, 4000, size=3))
    audio = audio * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t)) + 0.02 * rng.standard_normal(t.size)
    return np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)


def write_shards(directory: Path, clips: int, per_shard: int = 32, flac_level: int = DEFAULT_FLAC_LEVEL,
                 rate: int = FILE_RATE, convert: SampleConverter | None = None, gzipped: bool = False) -> list[str]:
    """Shards of `clips` synthetic 10-s clips: FLAC at `rate`, or converted by `prepare`'s `convert`."""
    import gzip
    import tarfile

    rng = np.random.default_rng(0)
    urls = []
    for start in range(0, clips, per_shard):
        path = directory / f"bench-{start // per_shard:06d}.tar{'.gz' if gzipped else ''}"
        with (gzip.open(path, "wb", compresslevel=1) if gzipped else open(path, "wb")) as f, \
                tarfile.open(fileobj=f, mode="w") as tar:
            for i in range(start, min(start + per_shard, clips)):
                meta = (f'{{"text": ["a synthetic chord number {i}", "tones and noise"], "source": "bench", '
                        f'"id": "{i}", "split": "train", "duration": {FILE_SECONDS}, "sample_rate": {rate}}}').encode()
                members = [("flac", encode_flac(synth_clip(rng, rate), rate, flac_level)), (JSON_EXT, meta)]
                if convert is not None:
                    _, members, _, _ = convert({"__key__": f"bench-{i}", **dict(members)})
                for ext, data in members:
                    info = tarfile.TarInfo(f"bench-{i}.{ext}")
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


def full_loader(urls: list[str], clips: int, tokenizer, decoder: ClipDecoder | None = None) -> None:
    decoder = decoder or ClipDecoder(MODEL_RATE, int(MODEL_RATE * CLIP_SECONDS), "repeat", is_train=True)
    stream = ClapStream([urls], decoder, Collate(tokenizer), BATCH, is_train=True,
                        batches_per_worker=clips // BATCH, shuffle_buffer=0)
    for batch in stream:
        assert batch[decoder.output_key].shape == (BATCH, *decoder.clip_shape)


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


def format_table(tmp: Path, clips: int, repeats: int, tokenizer) -> None:
    frontend = read_frontend(MODEL_CONFIG)
    frames = frames_for(int(MODEL_RATE * CLIP_SECONDS), frontend["hop_length"])
    logmel = LogMelDecoder(frames, frontend["n_mels"], "repeat", is_train=True)
    formats = {  # name: (shard options, decoder); every file holds 10 s at 44.1 kHz
        "FLAC level 5 (archival default)": (dict(flac_level=5), None),
        "FLAC level 0": (dict(flac_level=0), None),
        "PCM16 WAV at model rate (prepare --format pcm16)": (dict(convert=SampleConverter("pcm16", frontend)), None),
        "log-mel fp16 (prepare --format logmel)": (dict(convert=SampleConverter("logmel", frontend)), logmel),
        "log-mel fp16, gzipped shards (.tar.gz)": (
            dict(convert=SampleConverter("logmel", frontend), gzipped=True),
            logmel,
        ),
    }
    paths, sizes = {}, {}
    for n, (name, (options, decoder)) in enumerate(formats.items()):
        directory = tmp / f"format{n}"
        directory.mkdir()
        urls = write_shards(directory, clips, rate=MODEL_RATE, **options)
        sizes[name] = sum(Path(u).stat().st_size for u in urls) / clips * CLIP_SECONDS / FILE_SECONDS
        paths[name] = (lambda urls=urls, decoder=decoder: full_loader(urls, clips, tokenizer, decoder))
    rates = best_rates(paths, clips, repeats)
    print(f"Formats: {clips} clips of {FILE_SECONDS:.0f} s at {MODEL_RATE} Hz, full loader (random 7-s crop, tokenize, "
          f"batch {BATCH}), 1 thread, best of {repeats}")
    print(f"{'format':50s} {'clips/s/core':>12s} {'KB per 7 s':>10s} {'cores/GPU @4000':>15s} {'target':>6s}")
    for name, rate in rates.items():
        ok = rate >= TARGET_CLIPS_PER_CORE and sizes[name] <= TARGET_BYTES
        print(f"{name:50s} {rate:12.1f} {sizes[name] / 1000:10.1f} {TARGET_PAIRS_PER_S / rate:15.1f} "
              f"{'yes' if ok else 'no':>6s}")
    print(f"cores/GPU: loader cores to feed {TARGET_PAIRS_PER_S} pairs/s, issue 17's target step rate (not measured "
          f"here); target: >= {TARGET_CLIPS_PER_CORE} clips/s/core at <= {TARGET_BYTES // 1000} KB per 7-s clip")


def decode_table(tmp: Path, clips: int, repeats: int, flac_level: int, tokenizer) -> None:
    urls = write_shards(tmp, clips, flac_level=flac_level)
    flacs = [s["flac"] for url in urls for s in read_tar_samples(url, Counter())]
    rows = list(best_rates({
        "raw soundfile decode (whole file)": lambda: raw_decode(flacs),
        "msclap-style (decode all, new Resample, crop)": lambda: msclap_style(flacs, cache_kernel=False),
        "msclap-style, kernel cached": lambda: msclap_style(flacs, cache_kernel=True),
        "full loader (seek+crop, resample 7 s, tokenize, batch)": lambda: full_loader(urls, clips, tokenizer),
    }, clips, repeats).items())
    loader = rows[-1][1]
    print(f"Decode paths: {clips} clips of {FILE_SECONDS:.0f} s at {FILE_RATE} Hz -> {CLIP_SECONDS:.0f} s at "
          f"{MODEL_RATE} Hz, FLAC level {flac_level}, 1 thread, best of {repeats}")
    print(f"{'path':58s} {'clips/s/core':>12s} {'loader / path':>14s}")
    for name, rate in rows:
        print(f"{name:58s} {rate:12.1f} {loader / rate:13.2f}x")
    print(f"targets: loader/raw >= 0.80 (got {loader / rows[0][1]:.2f}), loader/msclap-style >= 1.50 "
          f"(got {loader / rows[1][1]:.2f}; {loader / rows[2][1]:.2f} against the cached-kernel variant)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flac-level", type=int, default=DEFAULT_FLAC_LEVEL,
                        help="FLAC level of the decode-paths table's shards (data_recipes build --flac-level)")
    parser.add_argument("--table", choices=("formats", "decode", "both"), default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_caption_tokenizer("gpt2", {"tokenizer": "builtin:tiny-bpe", "max_length": 32})
    with tempfile.TemporaryDirectory() as tmp:
        if args.table in ("formats", "both"):
            format_table(Path(tmp), args.clips, args.repeats, tokenizer)
        if args.table in ("decode", "both"):
            decode_table(Path(tmp), args.clips, args.repeats, args.flac_level, tokenizer)


if __name__ == "__main__":
    main()
