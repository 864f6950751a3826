"""The one shard writer: recipe items -> WebDataset shards, `manifest.json` and `sizes.json`.

Determinism. A split's items (`Recipe.items`, deterministic order) are cut into shards by
`plan_shards` before any audio is touched: shard i holds items[i*N:(i+1)*N] for N samples
per shard. With `max_shard_bytes`, the plan also starts a new shard before the *estimated*
size (`Recipe.estimate_bytes`, an upper bound computed from the item list alone, such as a
file size or a duration) would pass the limit. Cutting on estimates rather than on the
encoded bytes keeps the plan a pure function of (items, parameters), so `--part` tasks
agree on it, reruns rebuild the same shard from the same items, and shard names stay
`%06d` without gaps. A shard whose real size still exceeds the limit is written anyway.

Crash safety. Every shard is written to `<shard>.tar.tmp`, flushed to disk, its stats
saved to `.stats/<shard>.json`, then renamed to `<shard>.tar`. A rerun treats an existing
`.tar` as complete and leaves it untouched; everything else (leftover `.tmp`, no file) is
rebuilt from its planned items. A worker that dies stops the build with one line; rerun
the same command to finish. The build parameters (rate, FLAC level, shard plan, recipe
version and options) are saved to `.stats/build.json` before the first shard is written, so
a rerun with other parameters is refused, naming them, even after a kill left no manifest.

Tar members are `<key>.flac` then `<key>.json` per sample, with fixed metadata (mtime 0,
mode 0644, no owner), so a shard's bytes depend only on its samples.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import tarfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from clap_lightning.data import schema
from data_recipes.base import Recipe, RecipeError, SkipSample
from data_recipes.leakage import apply_exclude

log = logging.getLogger(__name__)

STATS_DIR = ".stats"  # per-shard stats, written before the shard's rename; the manifests are built from them
BUILD_RECORD = "build.json"  # in STATS_DIR: the build parameters, written before the first shard
_MAX_EXAMPLES = 5  # skipped items described per shard (and 4x that per manifest)
DEFAULT_FLAC_LEVEL = 5  # libsndfile's own default, so shards written before the option are this level


@dataclasses.dataclass
class WriterConfig:
    """How shards are built; everything but `workers` and `show_progress` goes into the manifest."""

    sample_rate: int = 44100  # rate of every written clip in Hz; other rates are resampled
    flac_level: int = DEFAULT_FLAC_LEVEL  # FLAC compression level 0-8; 0-2 decode ~7-9% faster, ~1-4% larger
    samples_per_shard: int = 512  # items planned per shard (skipped items make a shard smaller)
    max_shard_bytes: int | None = None  # also start a new shard before the estimated size passes this
    workers: int = 1  # worker processes converting shards; 0 or 1 converts in this process
    part: tuple[int, int] | None = None  # (i, n): build only shards whose index % n == i
    show_progress: bool = True  # tqdm progress bar on stderr
    exclude: frozenset[str] = frozenset()  # ids/keys of clips to leave out (evaluation sets); see data_recipes.leakage

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.samples_per_shard <= 0:
            raise RecipeError(
                f"sample rate and samples per shard must be > 0, got {self.sample_rate}, {self.samples_per_shard}"
            )
        if self.flac_level not in range(9):
            raise RecipeError(f"FLAC compression level must be an integer 0-8, got {self.flac_level}")
        if self.max_shard_bytes is not None and self.max_shard_bytes <= 0:
            raise RecipeError(f"max shard bytes must be > 0, got {self.max_shard_bytes}")
        if self.part is not None and not (0 <= self.part[0] < self.part[1]):
            raise RecipeError(f"bad part {self.part[0]}/{self.part[1]}: expected i/n with 0 <= i < n")


class WorkerDied(RuntimeError):
    """A conversion worker process died (killed, out of memory); completed shards are kept."""


def parse_part(text: str) -> tuple[int, int]:
    """Parse `--part i/n` into (i, n); ValueError unless 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise RecipeError(f"bad --part '{text}': expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match.group(1)), int(match.group(2))


def parse_size(text: str) -> int:
    """Parse a byte count such as `500000`, `512M` or `1G` (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not match or int(match.group(1)) == 0:
        raise RecipeError(f"bad size '{text}': expected a positive byte count such as 500000, 512M or 1G")
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")


def plan_shards(n_items: int, samples_per_shard: int, max_shard_bytes: int | None = None,
                estimates: list[int] | None = None) -> list[tuple[int, int]]:
    """Cut items [0, n_items) into shards; return each shard's (start, stop) item range."""
    if max_shard_bytes is None or estimates is None:
        return [(s, min(s + samples_per_shard, n_items)) for s in range(0, n_items, samples_per_shard)]
    plan, start, size = [], 0, 0
    for i, estimate in enumerate(estimates):
        full = i - start >= samples_per_shard or (i > start and size + estimate > max_shard_bytes)
        if full:
            plan.append((start, i))
            start, size = i, 0
        size += estimate
    if start < n_items:
        plan.append((start, n_items))
    return plan


# ---------------------------------------------------------------------------------------
# One sample: audio -> 16-bit mono FLAC, meta -> json


@functools.lru_cache(maxsize=4)
def _resampler(target_rate: int) -> Any:
    # Imported here: building shards at the recipe's own rate needs no torch. The loader's
    # resampler: torchaudio's filter, and bounded cost at odd rates (16001 Hz) where
    # torchaudio's dense kernel takes gigabytes. One per process, so each kernel is built once.
    from clap_lightning.audio.io import Resampler

    return Resampler(target_rate)


def _resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return _resampler(target_rate)(torch.from_numpy(audio), rate).numpy()


def prepare_audio(audio: np.ndarray, rate: int, target_rate: int) -> tuple[np.ndarray, bool]:
    """Down-mix [C, T] to mono by averaging, resample, quantise to int16; return (pcm, clipped)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        if x.shape[0] > x.shape[1]:
            raise SkipSample("bad_audio_shape", f"expected channels-first [C, T], got {x.shape}")
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise SkipSample("bad_audio_shape", f"expected [T] or [C, T], got {x.shape}")
    if x.size == 0:
        raise SkipSample("empty_audio")
    if not np.isfinite(x).all():
        raise SkipSample("non_finite_audio")
    if rate != target_rate:
        x = _resample(np.ascontiguousarray(x), rate, target_rate)
        if x.size == 0:
            raise SkipSample("empty_audio", "nothing left after resampling")
    scaled = np.round(x.astype(np.float64) * 32767.0)
    clipped = bool(scaled.max() > 32767 or scaled.min() < -32768)
    return np.clip(scaled, -32768, 32767).astype(np.int16), clipped


def encode_flac(pcm: np.ndarray, sample_rate: int, level: int = DEFAULT_FLAC_LEVEL) -> bytes:
    """Encode int16 mono samples as a 16-bit FLAC file in memory at compression level 0-8.

    Lossless at every level: the level trades file size against encode and decode time.
    """
    buffer = io.BytesIO()
    # libsndfile takes the level as a fraction of its 0-8 range.
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16", compression_level=level / 8)
    return buffer.getvalue()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_item(recipe: Recipe, item: Any, split: str, sample_rate: int,
                flac_level: int) -> tuple[str, bytes, bytes, float, bool]:
    """Load one item and encode it; return (key, flac, json, seconds, clipped).

    Raises:
        SkipSample: the item is unusable; `reason` names why.
    """
    sample = recipe.load(item, sample_rate)
    if sample is None:
        raise SkipSample("no_sample", "the recipe returned None")
    key = schema.sample_key(recipe.name, sample.stable_id)
    pcm, clipped = prepare_audio(sample.audio, sample.sample_rate, sample_rate)
    seconds = len(pcm) / sample_rate
    meta = dict(sample.meta)
    meta.update(
        source=recipe.name, id=sample.stable_id, split=split, duration=round(seconds, 6), sample_rate=sample_rate
    )
    problems = schema.validate_sample_json(meta)
    if problems:
        reason = "empty_text" if any("'text'" in p for p in problems) else "invalid_json"
        raise SkipSample(reason, "; ".join(problems))
    try:
        text = json.dumps(meta, ensure_ascii=False, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise SkipSample("invalid_json", str(err)) from None
    return key, encode_flac(pcm, sample_rate, flac_level), text.encode("utf-8"), seconds, clipped


# ---------------------------------------------------------------------------------------
# One shard (runs in a worker process)

_progress_hook: Callable[[], None] | None = None  # called once per item; set per process


def _init_worker(counter: Any) -> None:
    global _progress_hook

    def tick() -> None:
        with counter.get_lock():
            counter.value += 1

    _progress_hook = tick
    if "torch" in sys.modules:  # forked after torch was imported: one thread per worker process
        sys.modules["torch"].set_num_threads(1)


@dataclasses.dataclass
class ShardTask:
    """Everything a worker needs to write one shard."""

    recipe: Recipe | None
    split: str
    index: int
    items: Sequence[Any]
    path: Path
    sample_rate: int
    flac_level: int
    duplicates: dict[int, str] = dataclasses.field(default_factory=dict)  # {offset in items: key an earlier item holds}
    # item -> (key, [(extension, bytes), ...], seconds, clipped); None: `encode_item` (FLAC + json).
    # `prepare` converts archival shards to a training format through it (data_recipes.prepare).
    encode: Callable[[Any], tuple[str, list[tuple[str, bytes]], float, bool]] | None = None


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _record_skip(stats: dict[str, Any], reason: str, item: Any, detail: str) -> None:
    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
    if len(stats["skipped_examples"]) < _MAX_EXAMPLES:
        stats["skipped_examples"].append({"shard": stats["name"], "reason": reason,
                                          "item": repr(item)[:200], "detail": detail[:300]})


def _write_members(task: ShardTask, tar: tarfile.TarFile, stats: dict[str, Any]) -> None:
    keys: set[str] = set()
    for offset, item in enumerate(task.items):
        try:
            if offset in task.duplicates:
                raise SkipSample("duplicate_key", f"{task.duplicates[offset]} (an earlier item of the split has it)")
            if task.encode is not None:
                key, members, seconds, clipped = task.encode(item)
            else:
                key, flac, meta, seconds, clipped = encode_item(task.recipe, item, task.split, task.sample_rate,
                                                                task.flac_level)
                members = [(schema.AUDIO_EXT, flac), (schema.JSON_EXT, meta)]
            if key in keys:
                raise SkipSample("duplicate_key", key)
        except SkipSample as err:
            _record_skip(stats, err.reason, item, str(err))
        except Exception as err:  # a bad item must not stop the build; it is counted by exception type
            _record_skip(stats, f"error_{type(err).__name__}", item, str(err))
        else:
            keys.add(key)
            for ext, data in members:
                _add_member(tar, f"{key}.{ext}", data)
            stats["samples"] += 1
            stats["seconds"] += seconds
            stats["clipped"] += int(clipped)
        if _progress_hook is not None:
            _progress_hook()


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Write one shard under a temporary name, save its stats, then rename it; return the stats."""
    stats: dict[str, Any] = {"name": task.path.name, "index": task.index, "items": len(task.items), "samples": 0,
                             "seconds": 0.0, "bytes": 0, "clipped": 0, "skipped": {}, "skipped_examples": []}
    tmp = task.path.with_name(task.path.name + ".tmp")
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _write_members(task, tar, stats)
        f.flush()
        os.fsync(f.fileno())
    stats["bytes"] = tmp.stat().st_size
    stats["seconds"] = round(stats["seconds"], 6)
    write_json_atomic(_stats_path(task.path), stats)
    os.replace(tmp, task.path)
    return stats


def _stats_path(shard: Path) -> Path:
    return shard.parent / STATS_DIR / (shard.name + ".json")


def _scan_shard(path: Path, index: int, n_items: int) -> dict[str, Any]:
    # A complete shard without stats (copied in by hand): count what it holds.
    samples, seconds = 0, 0.0
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith("." + schema.JSON_EXT):
                samples += 1
                seconds += float(json.load(tar.extractfile(member)).get("duration", 0.0))
    skipped = {"unknown": n_items - samples} if n_items > samples else {}
    return {"name": path.name, "index": index, "items": n_items, "samples": samples, "seconds": round(seconds, 6),
            "bytes": path.stat().st_size, "clipped": 0, "skipped": skipped, "skipped_examples": []}


def load_shard_stats(path: Path, index: int, n_items: int) -> dict[str, Any]:
    """Return the stats of a complete shard, from `.stats/` or by scanning the tar."""
    stats_file = _stats_path(path)
    if stats_file.is_file():
        return json.loads(stats_file.read_text(encoding="utf-8"))
    return _scan_shard(path, index, n_items)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented UTF-8 json to a temporary name, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Running shard tasks


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and shares the already imported modules; the
    # parent never runs torch kernels before forking, so no thread pool is forked mid-use.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _run_in_process(tasks: list[ShardTask], bar: tqdm) -> list[dict[str, Any]]:
    global _progress_hook
    _progress_hook = lambda: bar.update(1)  # noqa: E731
    try:
        return [write_shard(task) for task in tasks]
    finally:
        _progress_hook = None


def _run_in_workers(tasks: list[ShardTask], workers: int, bar: tqdm) -> list[dict[str, Any]]:
    # ProcessPoolExecutor rather than multiprocessing.Pool: a killed worker raises
    # BrokenProcessPool here, where a Pool would wait forever for the lost task.
    context = _mp_context()
    counter = context.Value("q", 0)
    results, seen = [], 0
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(counter,))
    try:
        pending = {executor.submit(write_shard, task) for task in tasks}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            results.extend(future.result() for future in done)
            bar.update(counter.value - seen)
            seen = counter.value
    except BrokenProcessPool:
        raise WorkerDied("a shard worker process died (killed or out of memory); completed shards are kept, "
                         "rerun the same command to build the rest") from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return results


def run_tasks(tasks: list[ShardTask], workers: int, desc: str, show_progress: bool = True) -> list[dict[str, Any]]:
    """Write the shards of `tasks` (in parallel when workers > 1); return their stats."""
    total = sum(len(task.items) for task in tasks)
    with tqdm(total=total, desc=desc, unit="clip", disable=not show_progress or not tasks,
              file=sys.stderr, mininterval=1.0, dynamic_ncols=True) as bar:
        if workers <= 1 or len(tasks) <= 1:
            return _run_in_process(tasks, bar)
        return _run_in_workers(tasks, min(workers, len(tasks)), bar)


# ---------------------------------------------------------------------------------------
# Building splits and manifests


def _build_params(
    recipe: Recipe, config: WriterConfig, n_items: int, n_shards: int, src: Path | None
) -> dict[str, Any]:
    # The exclusion list changes the shard plan, so its digest is a build parameter.
    exclude = None
    if config.exclude:
        exclude = {"ids": len(config.exclude), "sha1": schema.exclude_digest(config.exclude)}
    return {
        "sample_rate": config.sample_rate,
        "flac_level": config.flac_level,
        "samples_per_shard": config.samples_per_shard,
        "max_shard_bytes": config.max_shard_bytes,
        "items": n_items,
        "planned_shards": n_shards,
        "exclude": exclude,
        "src": str(Path(src).resolve()) if src is not None else None,
    }


def _recipe_info(recipe: Recipe) -> dict[str, Any]:
    options = dataclasses.asdict(recipe.config) if dataclasses.is_dataclass(recipe.config) else {}
    return {"name": recipe.name, "version": recipe.version, "options": options}


def _comparable(manifest: dict[str, Any]) -> tuple[Any, Any]:
    build = {k: v for k, v in manifest["build"].items() if k != "src"}  # the corpus may move
    build.setdefault("flac_level", DEFAULT_FLAC_LEVEL)  # manifests written before the option
    return build, manifest["recipe"]


def _differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    # "sample_rate 16000 (now 22050)" for each build parameter, recipe version or option that changed.
    (old_build, old_recipe), (new_build, new_recipe) = _comparable(previous), _comparable(current)
    pairs = [(k, old_build.get(k), new_build.get(k)) for k in sorted(set(old_build) | set(new_build))]
    pairs += [(f"recipe {k}", old_recipe.get(k), new_recipe.get(k)) for k in ("name", "version")]
    old_options, new_options = old_recipe.get("options") or {}, new_recipe.get("options") or {}
    pairs += [
        (f"option {k}", old_options.get(k), new_options.get(k)) for k in sorted(set(old_options) | set(new_options))
    ]
    return [f"{name} {old!r} (now {new!r})" for name, old, new in pairs if old != new]


def find_duplicate_keys(recipe: Recipe, items: list[Any]) -> dict[int, str]:
    """Return {index: key} of the items whose sample key an earlier item of the split already has.

    Keys come from `Recipe.match_ids` (the stable id, known from `items`), so duplicates are
    found across shards and `--part` tasks alike, before any audio is read: the first item
    with a key wins, even if its audio later proves unusable. Items without ids are checked
    only within their shard, when loaded.
    """
    seen: set[str] = set()
    duplicates = {}
    for index, item in enumerate(items):
        ids = recipe.match_ids(item)
        if not ids or not ids[0]:
            continue
        key = schema.sample_key(recipe.name, ids[0])
        if key in seen:
            duplicates[index] = key
        seen.add(key)
    return duplicates


def check_previous_build(directory: Path, current: dict[str, Any]) -> None:
    """Refuse to add to a directory built with other parameters, then record the current ones.

    Complete shards are reused only when they were planned from the same items and
    parameters; a mismatch would silently mix two builds in one directory. The record in
    `.stats/build.json` is written before the first shard, so a killed build (shards, no
    manifest yet) is checked too; manifests cover directories built before the record.
    """
    record = directory / STATS_DIR / BUILD_RECORD
    found = [record] if record.is_file() else []
    for path in found + sorted(directory.glob("manifest*.json")):
        previous = schema.read_manifest(directory, path.name) if path != record else _read_record(record)
        differing = _differences(previous, current)
        if differing:
            raise RecipeError(
                f"{directory} holds a build with other parameters: {'; '.join(differing)} "
                f"(recorded in {path.name}); rerun with the recorded ones, use another --out or delete {directory}"
            )
    if not found:
        write_json_atomic(record, current)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecipeError(f"build record {path} is not valid json: {err}; delete it to rebuild") from None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("build"), dict)
        or not isinstance(record.get("recipe"), dict)
    ):
        raise RecipeError(f"build record {path} lacks 'build' or 'recipe'; delete it to rebuild")
    return record


def make_manifest(recipe: Recipe | tuple[str, dict[str, Any]], split: str, build: dict[str, Any],
                   stats: list[dict[str, Any]], part: tuple[int, int] | None, excluded: int = 0) -> dict[str, Any]:
    """A split's (or part's) manifest from its shards' stats; `recipe` is a Recipe or (source, recipe info)."""
    source, recipe_info = recipe if isinstance(recipe, tuple) else (recipe.name, _recipe_info(recipe))
    stats = sorted(stats, key=lambda s: s["index"])
    skipped: dict[str, int] = {}
    for shard in stats:
        for reason, count in shard["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
    fields = ("name", "index", "samples", "seconds", "bytes")
    seconds = sum(s["seconds"] for s in stats)
    return {
        "format": schema.MANIFEST_FORMAT, "source": source, "split": split,
        "recipe": recipe_info, "build": build,
        "part": {"index": part[0], "count": part[1]} if part else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shards": [{k: s[k] for k in fields} for s in stats if s["samples"] > 0],
        "empty_shards": [{k: s[k] for k in fields} for s in stats if s["samples"] == 0],
        "num_samples": sum(s["samples"] for s in stats), "items": sum(s["items"] for s in stats),
        "hours": round(seconds / 3600, 6), "clipped": sum(s["clipped"] for s in stats),
        "excluded": excluded,  # items of the whole split dropped by --exclude, before planning
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": [e for s in stats for e in s["skipped_examples"]][: 4 * _MAX_EXAMPLES],
    }


def _write_final(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(directory / schema.SIZES_NAME, {s["name"]: s["samples"] for s in manifest["shards"]})
    write_json_atomic(directory / schema.MANIFEST_NAME, manifest)


def build_split(recipe: Recipe, split: str, out: str | Path, src: str | Path | None,
                config: WriterConfig) -> dict[str, Any]:
    """Build (or finish) one split's shards; return its manifest (a part manifest with `config.part`)."""
    src = Path(src) if src is not None else None
    items = recipe.items(src, split)
    if not items:
        raise RecipeError(f"corpus '{recipe.name}' split '{split}' has no items" + (f" under {src}" if src else ""))
    items, excluded = apply_exclude(recipe, items, config.exclude)
    if not items:
        raise RecipeError(f"corpus '{recipe.name}' split '{split}': all {excluded} items are in the --exclude list")
    estimates = None
    if config.max_shard_bytes is not None:
        estimates = [recipe.estimate_bytes(item, config.sample_rate) for item in items]
        if any(e is None for e in estimates):
            log.warning("corpus '%s' gives no size estimates; --max-shard-bytes is ignored", recipe.name)
            estimates = None
    plan = plan_shards(len(items), config.samples_per_shard, config.max_shard_bytes, estimates)
    directory = schema.split_dir(out, recipe.name, split)
    directory.mkdir(parents=True, exist_ok=True)
    build = _build_params(recipe, config, len(items), len(plan), src)
    check_previous_build(directory, {"build": build, "recipe": _recipe_info(recipe)})

    indices = [i for i in range(len(plan)) if config.part is None or i % config.part[1] == config.part[0]]
    duplicates = find_duplicate_keys(recipe, items)
    stats, tasks = [], []
    for i in indices:
        path = schema.shard_path(out, recipe.name, split, i)
        start, stop = plan[i]
        if path.is_file():
            stats.append(load_shard_stats(path, i, stop - start))
        else:
            shard_duplicates = {j - start: key for j, key in duplicates.items() if start <= j < stop}
            tasks.append(ShardTask(recipe, split, i, items[start:stop], path, config.sample_rate, config.flac_level,
                                   shard_duplicates))
    stats += run_tasks(tasks, config.workers, f"{recipe.name}/{split}", config.show_progress)

    manifest = make_manifest(recipe, split, build, stats, config.part, excluded)
    if manifest["num_samples"] == 0 and config.part is None:
        _remove_empty_build(directory, stats)
        example = manifest["skipped_examples"][0]["detail"] if manifest["skipped_examples"] else ""
        raise RecipeError(f"corpus '{recipe.name}' split '{split}': no usable clips among {manifest['items']} items "
                         f"(skipped: {manifest['skipped']}); first problem: {example}")
    write_manifest(directory, manifest, config.part)
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any], part: tuple[int, int] | None) -> None:
    """Write a split's `manifest.json` and `sizes.json`, or with `part` its part manifest (for `merge`)."""
    if part is None:
        _write_final(directory, manifest)
    else:
        write_json_atomic(directory / schema.part_manifest_name(*part), manifest)


def _remove_empty_build(directory: Path, stats: list[dict[str, Any]]) -> None:
    # Every shard is empty: delete them and the build record, so a rerun after fixing the
    # corpus rebuilds them instead of reusing empty "complete" shards.
    for shard in stats:
        for path in (directory / shard["name"], directory / STATS_DIR / (shard["name"] + ".json")):
            path.unlink(missing_ok=True)
    (directory / STATS_DIR / BUILD_RECORD).unlink(missing_ok=True)


def check_src(recipe: Recipe, src: str | Path | None) -> None:
    """Raise one clear line when `src` is missing but needed, or not a directory."""
    if src is None:
        if recipe.needs_src:
            raise RecipeError(f"corpus '{recipe.name}' needs --src DIR (the downloaded corpus)")
        return
    if not Path(src).is_dir():
        raise FileNotFoundError(f"--src {src} is not a directory")


def build_corpus(recipe: Recipe, out: str | Path, src: str | Path | None, splits: list[str] | None,
                 config: WriterConfig) -> dict[str, dict[str, Any]]:
    """Build the given splits (all of the recipe's by default); return {split: manifest}."""
    check_src(recipe, src)
    unknown = [s for s in splits or [] if s not in recipe.splits]
    if unknown:
        raise RecipeError(f"unknown split '{unknown[0]}' for corpus '{recipe.name}'; known: {', '.join(recipe.splits)}")
    return {split: build_split(recipe, split, out, src, config) for split in splits or recipe.splits}


def merge_parts(out: str | Path, source: str, split: str) -> dict[str, Any]:
    """Combine the part manifests of one split into `manifest.json` and `sizes.json`.

    Raises:
        ValueError: parts are missing (named), disagree on parameters, or miss shards.
    """
    directory = schema.split_dir(out, source, split)
    found = sorted(directory.glob(schema.PART_MANIFEST_PATTERN.format(index="*", count="*")))
    if not found:
        raise FileNotFoundError(f"no part manifests in {directory} (build with --part i/n first)")
    parts = [schema.read_manifest(directory, path.name) for path in found]
    counts = sorted({p["part"]["count"] for p in parts})
    if len(counts) != 1:
        raise RecipeError(
            f"part manifests in {directory} come from different part counts {counts}; delete the stale ones"
        )
    count = counts[0]
    have = {p["part"]["index"] for p in parts}
    missing = [schema.part_manifest_name(i, count) for i in range(count) if i not in have]
    if missing:
        raise RecipeError(
            f"cannot merge {source}/{split}: missing {', '.join(missing)} (run those --part builds first)"
        )
    if len({json.dumps(_comparable(p), sort_keys=True) for p in parts}) != 1:
        raise RecipeError(f"part manifests in {directory} disagree on build parameters or recipe version")
    shards = sorted((s for p in parts for s in p["shards"] + p["empty_shards"]), key=lambda s: s["index"])
    planned = parts[0]["build"]["planned_shards"]
    if [s["index"] for s in shards] != list(range(planned)):
        raise RecipeError(f"part manifests in {directory} do not cover shards 0..{planned - 1} exactly once")
    absent = [s["name"] for s in shards if not (directory / s["name"]).is_file()]
    if absent:
        raise FileNotFoundError(
            f"shards listed in part manifests are missing from {directory}: {', '.join(absent[:5])}"
        )
    merged = dict(
        parts[0], part=None, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    merged["shards"] = [s for s in shards if s["samples"] > 0]
    merged["empty_shards"] = [s for s in shards if s["samples"] == 0]
    for key in ("num_samples", "items", "clipped"):
        merged[key] = sum(p[key] for p in parts)
    merged["hours"] = round(sum(s["seconds"] for s in shards) / 3600, 6)
    skipped: dict[str, int] = {}
    for p in parts:
        for reason, n in p["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    merged["skipped"] = dict(sorted(skipped.items()))
    examples = sorted((e for p in parts for e in p["skipped_examples"]), key=lambda e: e["shard"])  # stable
    merged["skipped_examples"] = examples[: 4 * _MAX_EXAMPLES]
    _write_final(directory, merged)
    return merged
