"""Damaged shards generated from a seed, each with what the loader must make of it.

Every case is one shard file plus, per original sample, the outcome a correct reader gives:
decoded with these captions (and length), or skipped for this reason. Byte-level damage
(truncation, bit flips, gzip corruption) cannot be predicted sample by sample, so those
cases carry the member layout instead and are judged by invariants (see `test_shards.py`).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import tarfile
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from tests.shard_factory import encode

MODEL_RATE = 16000  # the decoder's rate in the fuzz tests
CLIP = 2000  # samples per clip at MODEL_RATE
RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000, 7999, 16001)
WORDS = "a dog barks rain falls on a roof bell rings twice engine hums low bird sings".split()


@dataclass
class Sample:
    """One original sample and what decoding it must give."""

    key: str
    members: list[tuple[str, bytes]]
    captions: Optional[list[str]] = None  # decoded with these texts; None = skipped
    reason: str = ""  # the skip reason when captions is None
    length: Optional[int] = None  # expected `length` when known


@dataclass
class ShardCase:
    """One shard file and how to judge reading it."""

    name: str
    samples: list[Sample]
    data: bytes = b""
    suffix: str = ".tar"
    check: str = "exact"  # exact | truncated | flipped | gzip
    shard_reasons: dict[str, int] = field(default_factory=dict)  # exact: shard-level counts (empty_shard, ...)
    damage: Any = None  # truncated: the cut offset; flipped: the flipped byte offsets
    layout: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # key -> (data offset, size) per member
    end: int = 0  # offset of the end-of-archive block


def clip_length(frames: int, rate: int) -> int:
    """The `length` the decoder reports for `frames` at `rate`: resampled, at most one clip."""
    return min(CLIP, math.ceil(frames * MODEL_RATE / rate))


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT, extra=()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Maker:
    """Builds samples and cases from one generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def caption(self) -> str:
        return " ".join(self.rng.choice(WORDS, size=int(self.rng.integers(2, 7))))

    def audio(self, seconds: float = 0.25, rate: int = 8000, channels: int = 1) -> np.ndarray:
        frames = int(seconds * rate)
        wave = 0.3 * np.sin(2 * np.pi * float(self.rng.uniform(100, 900)) * np.arange(frames) / rate)
        wave = wave.astype(np.float32)
        return wave if channels == 1 else np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1)

    def key(self) -> str:
        self.count += 1
        return f"k{self.count:05d}"

    def meta(self, key: str, captions: list[str], **fields) -> dict[str, Any]:
        return {"text": captions, "source": "fuzz", "id": key, "split": "test", "duration": 0.25,
                "sample_rate": 8000, "labels": ["tone"], **fields}

    def good(self, fmt_ext: str = "flac") -> Sample:
        key, captions = self.key(), [self.caption() for _ in range(int(self.rng.integers(1, 4)))]
        audio = encode(self.audio(), 8000, "FLAC" if fmt_ext == "flac" else "WAV")
        return Sample(
            key,
            [(f"{key}.{fmt_ext}", audio), (f"{key}.json", json.dumps(self.meta(key, captions)).encode())],
            captions,
            length=clip_length(2000, 8000),
        )

    def around(self, middle: list[Sample]) -> list[Sample]:
        """`middle` with 0-2 good samples before and after it."""
        return ([self.good() for _ in range(int(self.rng.integers(0, 3)))] + middle
                + [self.good() for _ in range(int(self.rng.integers(0, 3)))])

    def exact(self, name: str, middle: list[Sample], **kwargs) -> ShardCase:
        samples = self.around(middle)
        return ShardCase(name, samples, tar_bytes([m for s in samples for m in s.members]), **kwargs)


# Values of the wrong type (or edge values) for json fields, with what `text` holding each must give.
WRONG_VALUES: list[tuple[str, Any, Optional[list[str]], str]] = [
    ("none", None, None, "empty_text"),
    ("zero", 0, None, "bad_json"),
    ("negative", -7, None, "bad_json"),
    ("float", 3.5, None, "bad_json"),
    ("bool", True, None, "bad_json"),
    ("empty_string", "", None, "empty_text"),
    ("blank_string", "   ", None, "empty_text"),
    ("string", "a plain string caption", ["a plain string caption"], ""),
    ("empty_list", [], None, "empty_text"),
    ("int_list", [1, 2], None, "bad_json"),
    ("mixed_list", ["ok", 3], None, "bad_json"),
    ("dict", {"en": "a dog"}, None, "bad_json"),
    ("nested_list", [["nested"]], None, "bad_json"),
    ("nan", float("nan"), None, "bad_json"),
    ("huge_number", 1e308, None, "bad_json"),
    ("long_string", "word " * 20000, ["word " * 20000], ""),
    ("blank_entries", ["", "kept", " "], ["kept"], ""),
    ("unicode", ["чайка кричит 🐦"], ["чайка кричит 🐦"], ""),
]
JSON_FIELDS = ("text", "source", "id", "split", "duration", "sample_rate", "labels")

# Raw json member bytes and the reason they must be skipped under (None: decoded, captions given).
RAW_JSONS: list[tuple[str, bytes, Optional[list[str]], str]] = [
    ("empty", b"", None, "bad_json"),
    ("open_brace", b"{", None, "bad_json"),
    ("list", b'["a dog"]', None, "bad_json"),
    ("null", b"null", None, "bad_json"),
    ("number", b"42", None, "bad_json"),
    ("string", b'"a dog"', None, "bad_json"),
    ("not_utf8", b'{"text": ["\xff\xfe"]}', None, "bad_json"),
    ("deep", b"[" * 100000 + b"]" * 100000, None, "bad_json"),
    ("duplicate_text", b'{"text": ["a dog"], "text": 5}', None, "bad_json"),
    ("bom", b'\xef\xbb\xbf{"text": ["with a bom"]}', ["with a bom"], ""),
    ("no_text", b'{"source": "x"}', None, "empty_text"),
    ("nan_token", b'{"text": ["ok"], "duration": NaN}', ["ok"], ""),
]


def json_cases(make: Maker) -> list[ShardCase]:
    cases = []
    for fld in JSON_FIELDS:
        for label, value, captions, reason in WRONG_VALUES:
            key, audio = make.key(), encode(make.audio(), 8000)
            if fld == "text":
                meta, want, why = make.meta(key, value), captions, reason
            else:
                want = [make.caption()]
                meta, why = make.meta(key, want, **{fld: value}), ""
            sample = Sample(key, [(f"{key}.flac", audio), (f"{key}.json", json.dumps(meta).encode())], want, why,
                            clip_length(2000, 8000) if want else None)
            cases.append(make.exact(f"json-{fld}-{label}", [sample]))
    for label, raw, captions, reason in RAW_JSONS:
        key = make.key()
        sample = Sample(key, [(f"{key}.flac", encode(make.audio(), 8000)), (f"{key}.json", raw)], captions, reason,
                        clip_length(2000, 8000) if captions else None)
        cases.append(make.exact(f"rawjson-{label}", [sample]))
    return cases


def audio_cases(make: Maker, count: int) -> list[ShardCase]:
    """Odd rates, channel counts, formats, lengths and values."""
    cases = []
    formats = [("flac", "FLAC", "PCM_16"), ("wav", "WAV", "PCM_16"), ("wav", "WAV", "FLOAT"), ("wav", "WAV", "PCM_24"),
               ("ogg", "OGG", "VORBIS")]
    for i in range(count):
        ext, fmt, subtype = formats[int(make.rng.integers(len(formats)))]
        rate = int(make.rng.choice(RATES[:-2])) if i % 20 else int(RATES[-1 - (i // 20) % 2])  # few odd rates
        channels = int(make.rng.choice([1, 1, 2, 6]))
        kind = str(make.rng.choice(["normal", "normal", "zero_frames", "one_frame", "long", "nan", "inf", "loud"]))
        if fmt == "OGG" and kind in ("nan", "inf", "zero_frames", "one_frame", "loud"):
            kind = "normal"  # vorbis is lossy and cannot carry these exactly
        if fmt != "WAV" or subtype != "FLOAT":
            kind = {"nan": "normal", "inf": "normal"}.get(kind, kind)
        seconds = {"zero_frames": 0.0, "one_frame": 1.0 / rate, "long": 12.0}.get(kind, 0.25)
        wave = make.audio(seconds, rate, channels)
        if kind == "nan":
            wave[len(wave) // 2] = np.nan
        elif kind == "inf":
            wave[:] = np.inf
        elif kind == "loud":
            wave *= 1000.0 if subtype == "FLOAT" else 10.0  # PCM clips at full scale
        key, captions = make.key(), [make.caption()]
        members = [
            (f"{key}.{ext}", encode(wave, rate, fmt, subtype)),
            (f"{key}.json", json.dumps(make.meta(key, captions, sample_rate=int(make.rng.choice(RATES)))).encode()),
        ]
        frames = len(wave)
        if kind == "zero_frames":
            sample = Sample(key, members, None, "empty_audio")
        elif kind in ("nan", "inf"):
            sample = Sample(key, members, None, "nan_audio")
        else:
            sample = Sample(key, members, captions, length=None if fmt == "OGG" else clip_length(frames, rate))
        cases.append(make.exact(f"audio-{fmt}-{subtype}-{rate}hz-{channels}ch-{kind}", [sample]))
    return cases


def structure_cases(make: Maker) -> list[ShardCase]:
    """Members missing, empty, reordered, renamed, repeated, huge; shards empty or not tars."""
    cases = []

    def one(name: str, members_of, captions=True, reason: str = "", folder: str = "") -> None:
        key, want = folder + make.key(), [make.caption()]
        members = members_of(key, encode(make.audio(), 8000), json.dumps(make.meta(key, want)).encode())
        cases.append(make.exact(f"structure-{name}", [Sample(key, members, want if captions else None, reason,
                                                             clip_length(2000, 8000) if captions else None)]))

    one("missing_json", lambda k, a, j: [(f"{k}.flac", a)], False, "missing_json")
    one("missing_audio", lambda k, a, j: [(f"{k}.json", j)], False, "missing_audio")
    one("empty_audio_member", lambda k, a, j: [(f"{k}.flac", b""), (f"{k}.json", j)], False, "empty_audio")
    one("empty_json_member", lambda k, a, j: [(f"{k}.flac", a), (f"{k}.json", b"")], False, "bad_json")
    one("json_first", lambda k, a, j: [(f"{k}.json", j), (f"{k}.flac", a)])
    one("extra_members", lambda k, a, j: [(f"{k}.flac", a), (f"{k}.txt", b"notes"), (f"{k}.json", j),
                                          (f"{k}.npy", b"\x93NUMPY")])
    one("upper_case_ext", lambda k, a, j: [(f"{k}.FLAC", a), (f"{k}.JSON", j)])
    one("flac_named_wav", lambda k, a, j: [(f"{k}.wav", a), (f"{k}.json", j)])
    one("two_dots", lambda k, a, j: [(f"{k}.v2.flac", a), (f"{k}.v2.json", j)], False, "missing_json")
    one("long_name", lambda k, a, j: [(f"{k}.flac", a), (f"{k}.json", j)], folder="d" * 120 + "/")
    one("garbage_audio", lambda k, a, j: [(f"{k}.flac", bytes(make.rng.integers(0, 256, 3000, dtype=np.uint8))),
                                          (f"{k}.json", j)], False, "bad_audio")
    one("truncated_audio", lambda k, a, j: [(f"{k}.flac", a[: len(a) // 3]), (f"{k}.json", j)], False, "bad_audio")
    one("huge_json", lambda k, a, j: [(f"{k}.flac", a), (f"{k}.json", json.dumps(
        {**json.loads(j), "extra": "x" * 3_000_000}).encode())])

    def huge_audio(key, _audio, meta):
        noise = (0.1 * make.rng.standard_normal(8000 * 120)).astype(np.float32)  # 120 s: a ~2 MB FLAC member
        return [(f"{key}.flac", encode(noise, 8000)), (f"{key}.json", meta)]

    one("huge_audio", huge_audio)
    # A key repeated back to back: two samples, neither overwritten.
    first, other = make.good(), make.good()
    second = Sample(first.key, [(name.replace(other.key, first.key), data) for name, data in other.members],
                    other.captions, length=other.length)
    cases.append(make.exact("structure-repeated_key", [first, second]))
    # Links and directories between members are not files; they change nothing.
    sample = make.good()
    directory, link = tarfile.TarInfo("somedir"), tarfile.TarInfo(f"{sample.key}.link")
    directory.type, link.type, link.linkname = tarfile.DIRTYPE, tarfile.SYMTYPE, "elsewhere"
    cases.append(ShardCase("structure-links_and_dirs", [sample], tar_bytes(sample.members, extra=[directory, link])))
    # Every tar header format.
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        samples = [make.good() for _ in range(2)]
        cases.append(
            ShardCase(f"structure-format{fmt}", samples, tar_bytes([m for s in samples for m in s.members], fmt))
        )
    # Whole shards with nothing in them, or nothing readable.
    only_dir = tarfile.TarInfo("just-a-dir")
    only_dir.type = tarfile.DIRTYPE
    for name, data, suffix, reason in [
        ("zero_bytes", b"", ".tar", "empty_shard"), ("empty_tar", tar_bytes([]), ".tar", "empty_shard"),
        ("only_dirs", tar_bytes([], extra=[only_dir]), ".tar", "empty_shard"),
        ("empty_tar_gz", gzip.compress(tar_bytes([]), mtime=0), ".tar.gz", "empty_shard"),
        ("not_a_tar", b"this is not a tar archive at all\n" * 40, ".tar", "unreadable_shard"),
        ("gzip_of_junk", gzip.compress(b"junk" * 400, mtime=0), ".tar.gz", "unreadable_shard"),
        ("random_bytes", bytes(make.rng.integers(0, 256, 5000, dtype=np.uint8)), ".tar", "unreadable_shard"),
    ]:
        cases.append(ShardCase(f"shard-{name}", [], data, suffix, shard_reasons={reason: 1}))
    return cases


def _layout(data: bytes) -> tuple[dict[str, list[tuple[int, int]]], int]:
    layout: dict[str, list[tuple[int, int]]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    for m in members:
        layout.setdefault(m.name.split(".", 1)[0], []).append((m.offset, m.offset_data + m.size))
    last = members[-1] if members else None
    return layout, (last.offset_data + -(-last.size // 512) * 512) if last else 0


def damaged_base(make: Maker) -> tuple[list[Sample], bytes, dict, int]:
    samples = [make.good(str(make.rng.choice(["flac", "wav"]))) for _ in range(int(make.rng.integers(1, 5)))]
    fmt = int(make.rng.choice([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    data = tar_bytes([m for s in samples for m in s.members], fmt)
    layout, end = _layout(data)
    return samples, data, layout, end


def truncation_cases(make: Maker, count: int) -> list[ShardCase]:
    cases = []
    for i in range(count):
        samples, data, layout, end = damaged_base(make)
        cut = int(make.rng.integers(0, end + 513))  # up to just past the first end-of-archive block
        if i % 4 == 0:  # a quarter at block boundaries, where a cut reads like a shorter archive
            cut = min(end + 512, int(make.rng.integers(0, end // 512 + 2)) * 512)
        cases.append(ShardCase(f"truncate-{i}", samples, data[:cut], check="truncated", damage=cut, layout=layout,
                               end=end))
    return cases


def flip_cases(make: Maker, count: int) -> list[ShardCase]:
    cases = []
    for i in range(count):
        samples, data, layout, end = damaged_base(make)
        damaged = bytearray(data)
        offsets = sorted(int(o) for o in make.rng.integers(0, end + 1024, int(make.rng.integers(1, 4))))
        for offset in offsets:
            damaged[offset] ^= 1 << int(make.rng.integers(8))
        cases.append(ShardCase(f"flip-{i}", samples, bytes(damaged), check="flipped", damage=offsets, layout=layout,
                               end=end))
    return cases


def gzip_cases(make: Maker, count: int) -> list[ShardCase]:
    cases = []
    for i in range(count):
        samples, data, layout, end = damaged_base(make)
        packed = bytearray(gzip.compress(data, compresslevel=int(make.rng.choice([0, 1, 6, 9])), mtime=0))
        if i % 2:
            packed = packed[:int(make.rng.integers(0, len(packed)))]
        else:
            for offset in make.rng.integers(0, len(packed), int(make.rng.integers(1, 4))):
                packed[int(offset)] ^= 1 << int(make.rng.integers(8))
        cases.append(ShardCase(f"gzip-{'cut' if i % 2 else 'flip'}-{i}", samples, bytes(packed), ".tar.gz",
                               check="gzip", layout=layout, end=end))
    return cases


def all_cases(seed: int) -> list[ShardCase]:
    make = Maker(seed)
    return (json_cases(make) + audio_cases(make, 70) + structure_cases(make) + truncation_cases(make, 70)
            + flip_cases(make, 70) + gzip_cases(make, 50))
