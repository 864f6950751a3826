"""Checks and statistics over built shards: `python -m data_recipes validate|stats OUT`.

`validate` opens every shard a manifest lists, decodes every clip and checks it against
the shard contract (`clap_lightning.data.schema`) and against the manifest: member pairs,
key = `<source>-<id>`, json schema, source/split/sample rate, duration vs decoded length,
unique keys, per-shard and total counts, `sizes.json`, and stray or unfinished shards.
`stats` reads only the json members: clips, hours, captions per clip, labels, durations.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from clap_lightning.audio.frontend import frames_for
from clap_lightning.data import schema

_MAX_PROBLEMS = 20  # problems listed per split; the count is always complete
_DURATION_TOLERANCE = 2e-3  # seconds between json "duration" and the decoded length


def find_split_dirs(out: str | Path) -> list[Path]:
    """Split directories under `out` (or `out` itself) that hold a manifest.json."""
    out = Path(out)
    if (out / schema.MANIFEST_NAME).is_file():
        return [out]
    found = sorted(p.parent for p in out.rglob(schema.MANIFEST_NAME))
    if not found:
        raise FileNotFoundError(f"no {schema.MANIFEST_NAME} under {out} (build shards first)")
    return found


def iter_samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) per sample of a tar shard, in member order."""
    with tarfile.open(shard) as tar:
        key, parts = None, {}
        for member in tar:
            if not member.isfile():
                continue
            name = Path(member.name).name
            this_key, _, ext = name.partition(".")
            if key is not None and this_key != key:
                yield key, parts
                parts = {}
            key = this_key
            parts[ext] = tar.extractfile(member).read()
        if key is not None:
            yield key, parts


@dataclasses.dataclass
class SplitReport:
    """What `validate_split` found in one split directory."""

    directory: Path
    samples: int = 0
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)
    problem_count: int = 0

    def add(self, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(problem)


def _check_sample(report: SplitReport, manifest: dict, shard: str, key: str, parts: dict[str, bytes]) -> float:
    where = f"{shard}:{key}"
    fmt = manifest["build"].get("format")  # a training format made by `prepare`, or None (archival FLAC)
    audio_ext = schema.TRAINING_FORMATS.get(fmt, schema.AUDIO_EXT)
    if set(parts) != {audio_ext, schema.JSON_EXT}:
        report.add(f"{where}: members {sorted(parts)}, expected {audio_ext} and json")
        return 0.0
    try:
        meta = json.loads(parts[schema.JSON_EXT].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        report.add(f"{where}: json does not parse ({err})")
        return 0.0
    for problem in schema.validate_sample_json(meta):
        report.add(f"{where}: {problem}")
    expected = {
        "source": manifest["source"],
        "split": manifest["split"],
        "sample_rate": manifest["build"]["sample_rate"],
    }
    for field, value in expected.items():
        if meta.get(field) != value:
            report.add(f"{where}: json {field} {meta.get(field)!r}, manifest says {value!r}")
    if fmt == "logmel":
        return _check_logmel(report, where, parts[audio_ext], meta, manifest["build"]["frontend"])
    try:
        audio, rate = sf.read(io.BytesIO(parts[audio_ext]), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        report.add(f"{where}: {audio_ext} does not decode ({err})")
        return 0.0
    if rate != manifest["build"]["sample_rate"] or audio.shape[1] != 1:
        report.add(
            f"{where}: flac is {audio.shape[1]} channel(s) at {rate} Hz, "
            f"expected mono at {manifest['build']['sample_rate']}"
        )
    seconds = audio.shape[0] / rate
    if audio.shape[0] == 0 or abs(seconds - float(meta.get("duration") or 0)) > _DURATION_TOLERANCE:
        report.add(f"{where}: decoded {seconds:.4f} s, json duration {meta.get('duration')}")
    if isinstance(meta.get("id"), str) and meta["id"] and schema.sample_key(manifest["source"], meta["id"]) != key:
        report.add(f"{where}: key does not match source-id {manifest['source']}-{meta['id']}")
    return seconds


def _check_logmel(report: SplitReport, where: str, data: bytes, meta: dict, frontend: dict) -> float:
    """Check a `logmel.npy` member: fp16 [frames, n_mels] of finite values, as many frames as its duration gives."""
    try:
        feats = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        report.add(f"{where}: logmel.npy does not load ({err})")
        return 0.0
    if feats.dtype != np.float16 or feats.ndim != 2 or feats.shape[1] != frontend["n_mels"]:
        report.add(
            f"{where}: logmel.npy is {feats.dtype} {list(feats.shape)}, expected float16 [frames, {frontend['n_mels']}]"
        )
        return 0.0
    if not np.isfinite(feats).all():
        report.add(f"{where}: logmel.npy holds NaN or infinite values")
    seconds = float(meta.get("duration") or 0)
    frames = frames_for(round(seconds * frontend["sample_rate"]), frontend["hop_length"])
    if abs(frames - feats.shape[0]) > 1:
        report.add(f"{where}: {feats.shape[0]} frames, json duration {meta.get('duration')} gives {frames}")
    return seconds


def validate_split(directory: Path) -> SplitReport:
    """Check every shard and clip of one split directory against its manifest."""
    report = SplitReport(directory)
    try:
        manifest = schema.read_manifest(directory)
    except (OSError, ValueError) as err:
        report.add(str(err))
        return report
    listed = [s["name"] for s in manifest["shards"]]
    for extra in sorted(
        {p.name for p in directory.glob("*.tar")} - set(listed) - {s["name"] for s in manifest.get("empty_shards", [])}
    ):
        report.add(f"{extra}: shard not listed in the manifest")
    for leftover in sorted(directory.glob("*.tmp")):
        report.add(f"{leftover.name}: unfinished shard (rerun the build)")
    keys: set[str] = set()
    for shard in manifest["shards"]:
        path = directory / shard["name"]
        if not path.is_file():
            report.add(f"{shard['name']}: listed in the manifest but missing")
            continue
        count = 0
        try:
            for key, parts in iter_samples(path):
                count += 1
                if key in keys:
                    report.add(f"{shard['name']}:{key}: duplicate key in the split")
                keys.add(key)
                report.seconds += _check_sample(report, manifest, shard["name"], key, parts)
        except tarfile.TarError as err:
            report.add(f"{shard['name']}: unreadable tar ({err})")
        report.samples += count
        if count != shard["samples"]:
            report.add(f"{shard['name']}: {count} samples, manifest says {shard['samples']}")
    if report.samples != manifest["num_samples"]:
        report.add(f"{report.samples} samples in the shards, manifest num_samples says {manifest['num_samples']}")
    if abs(report.seconds / 3600 - manifest["hours"]) > 2e-6 + 1e-5 * manifest["hours"]:  # manifest rounds to 1e-6 h
        report.add(f"{report.seconds / 3600:.6f} h decoded, manifest says {manifest['hours']} h")
    sizes_path = directory / schema.SIZES_NAME
    sizes = json.loads(sizes_path.read_text(encoding="utf-8")) if sizes_path.is_file() else None
    if sizes != {s["name"]: s["samples"] for s in manifest["shards"]}:
        report.add(f"{schema.SIZES_NAME} is missing or disagrees with the manifest")
    return report


def read_metas(directory: Path) -> list[dict[str, Any]]:
    """The json of every sample in the shards a split's manifest lists (no audio decoding)."""
    metas = []
    for path in schema.manifest_shard_paths(directory):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("." + schema.JSON_EXT):
                    metas.append(json.loads(tar.extractfile(member).read().decode("utf-8")))
    return metas


def split_stats(directory: Path) -> dict[str, Any]:
    """Clips, hours, captions per clip, labels and duration percentiles of one split."""
    metas = read_metas(directory)
    durations = np.array([float(m.get("duration", 0.0)) for m in metas])
    captions = np.array([len(m.get("text", [])) for m in metas])
    labels = collections.Counter(label for m in metas for label in m.get("labels", []))
    manifest = schema.read_manifest(directory)
    return {
        "split": f"{manifest['source']}/{manifest['split']}",
        "clips": len(metas),
        "hours": float(durations.sum() / 3600),
        "captions_per_clip": {
            "mean": float(captions.mean()) if len(metas) else 0.0,
            "min": int(captions.min()) if len(metas) else 0,
            "max": int(captions.max()) if len(metas) else 0,
        },
        "duration_s": {
            q: float(np.percentile(durations, p)) if len(metas) else 0.0
            for q, p in (("min", 0), ("median", 50), ("p95", 95), ("max", 100))
        },
        "distinct_labels": len(labels),
        "skipped": manifest.get("skipped", {}),
        "excluded": manifest.get("excluded", 0),
        "durations": durations.tolist(),
    }


def plot_durations(stats: list[dict[str, Any]], path: Path) -> None:
    """Write a histogram of clip durations, one series per split, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    longest = max((max(s["durations"], default=0.0) for s in stats), default=1.0)
    bins = np.linspace(0.0, max(longest, 1e-3), 41)
    for s in stats:
        ax.hist(s["durations"], bins=bins, histtype="step", label=f"{s['split']} ({s['clips']})")
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("clips")
    ax.set_title("Clip durations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
