"""Small hand-made shards for loader tests: good samples and every kind of bad one."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import soundfile as sf

RATE = 8000  # shard sample rate of the test clips


def encode(audio: np.ndarray, rate: int = RATE, fmt: str = "FLAC", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def tone(seconds: float = 0.5, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def meta_json(key: str, text: Optional[list] = None, rate: int = RATE, source: str = "test") -> bytes:
    return json.dumps({"text": ["a tone"] if text is None else text, "source": source, "id": key,
                       "split": "train", "duration": 0.5, "sample_rate": rate, "labels": ["tone"]}).encode()


def good_members(key: str, source: str = "test") -> list[tuple[str, bytes]]:
    return [(f"{key}.flac", encode(tone())), (f"{key}.json", meta_json(key, source=source))]


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_good_shards(directory: Path, prefix: str, n_shards: int, per_shard: int) -> list[str]:
    """`n_shards` tars of `per_shard` valid samples keyed `<prefix>-<shard>-<i>`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(n_shards):
        members = [m for i in range(per_shard) for m in good_members(f"{prefix}-{s}-{i}", source=prefix)]
        urls.append(str(write_tar(directory / f"{prefix}-{s:06d}.tar", members)))
    return urls


def bad_members() -> dict[str, list[tuple[str, bytes]]]:
    """One sample of each bad kind, by the reason the decoder should count it under."""
    flac = encode(tone(1.0))
    nan = tone()
    nan[::50] = np.nan  # in every possible crop
    return {
        "bad_audio": [("corrupt.flac", b"fLaC" + bytes(range(256)) * 8), ("corrupt.json", meta_json("corrupt")),
                      ("truncated.flac", flac[: len(flac) // 2]), ("truncated.json", meta_json("truncated"))],
        "missing_json": [("nojson.flac", encode(tone()))],
        "bad_json": [("badjson.flac", encode(tone())), ("badjson.json", b"{not json")],
        "empty_text": [("notext.flac", encode(tone())), ("notext.json", meta_json("notext", text=[]))],
        "empty_audio": [("zero.flac", encode(np.zeros(0, dtype=np.float32))), ("zero.json", meta_json("zero"))],
        "nan_audio": [("nan.wav", encode(nan, fmt="WAV", subtype="FLOAT")), ("nan.json", meta_json("nan"))],
    }


def truncated_tar(path: Path, keys: list[str]) -> Path:
    """A tar whose last member is cut off mid-data: the first samples read, then a damaged member."""
    full = path.with_suffix(".full")
    write_tar(full, [m for key in keys for m in good_members(key)])
    with tarfile.open(full) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".flac")][-1]
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: last.offset_data + last.size // 2])  # cut inside the last sample's flac
    return path


def corrupt_gzip(data: bytes) -> bytes:
    """`data` gzipped, with one byte of the deflate stream flipped so that zlib itself fails
    ("invalid code lengths set"...), not the tar reader or the gzip trailer check."""
    import gzip
    import zlib

    packed = gzip.compress(data, mtime=0)
    for pos in range(10, len(packed) - 8):  # inside the deflate stream: after the header, before the trailer
        damaged = bytearray(packed)
        damaged[pos] ^= 0xFF
        try:
            zlib.decompress(bytes(damaged[10:]), -zlib.MAX_WBITS)
        except zlib.error:
            return bytes(damaged)
    raise AssertionError("no single flipped byte breaks this deflate stream")
