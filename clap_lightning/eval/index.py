"""Embedding indexes: embed a folder, a file list, a csv or shards into sharded `.npy` parts, and search them.

An index directory:

    index.json          what was embedded and how (inputs, model, long-audio mode); a rerun with
                        other settings is refused, a rerun with the same ones resumes
    part-000000.npy     float32 [n, d_proj] L2-normalised clip embeddings of part 0
    part-000000.csv     row, id, path, duration, windows: one line per embedded clip
    part-000000.windows.npy / .windows.csv   with `long_audio="windows"`: every window's embedding
                        and its start/end in seconds ("where in the file does the dog bark")
    part-000000.bad.csv files of part 0 that could not be decoded, with the reason

Inputs are cut into parts of `part_size` files (one part per shard for shard inputs). A part's
files appear whole or not at all (written under temporary names, its `.csv` renamed last), so
a killed run resumes by skipping the parts whose `.csv` exists.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from clap_lightning.audio.io import read_clip
from clap_lightning.data.sources import is_shard_name, resolve_shards
from clap_lightning.data.stream import read_tar_samples
from clap_lightning.errors import ClapError, DataError, first_line
from clap_lightning.models.clap import CLAP, embed_clips, frames_needed, pool_windows, prepare_audio, prepare_windows

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aif", ".aiff")
SETTINGS = "index.json"
INDEX_FORMAT = "clap-lightning/index-v1"


class IndexBuildError(ClapError):
    """An index directory cannot be built or read as asked."""


@dataclass(frozen=True)
class IndexSettings:
    """What determines an index's contents; a resumed run must use the same."""

    inputs: str  # the input specification as given
    checkpoint: str  # the model's checkpoint path (for `search` to embed queries with)
    long_audio: str  # "first" (the first clip_seconds) or "windows" (mean of overlapping windows)
    hop_seconds: float  # window hop for "windows"
    part_size: int  # files per part (shard inputs: one part per shard)


@dataclass
class Part:
    """One unit of work and output: a list of files, or one shard."""

    files: list[tuple[str, str]]  # (id, path); empty for a shard part
    shard: Optional[str] = None


def list_parts(spec: str, part_size: int) -> list[Part]:
    """Cut an input specification into parts.

    `spec` is a folder of audio files (searched recursively), a `.txt` list of audio paths
    (relative to the list's folder), a `.csv` with a `path` column (and optionally `id`), or
    shards in any form the loader accepts (a split folder, a `.tar`, a brace pattern).
    """
    path = Path(spec)
    if path.is_dir() and not looks_like_shards(path):
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        items = [(str(p.relative_to(path).with_suffix("")), str(p)) for p in files]
    elif path.suffix == ".csv" and path.is_file():
        items = read_csv_inputs(path)
    elif path.suffix == ".txt" and path.is_file() and not is_shard_list(path):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        items = [(line, str(path.parent / line)) for line in lines]
    else:
        return [Part([], shard=url) for url in resolve_shards(spec).urls]
    if not items:
        raise DataError(f"no audio files found in {spec} (looked for {', '.join(AUDIO_SUFFIXES)})")
    return [Part(items[i:i + part_size]) for i in range(0, len(items), part_size)]


def looks_like_shards(path: Path) -> bool:
    return (path / "manifest.json").is_file() or any(is_shard_name(p.name) for p in path.iterdir())


def is_shard_list(path: Path) -> bool:
    first = next((line.strip() for line in path.read_text().splitlines() if line.strip()), "")
    return is_shard_name(first) or first.startswith("pipe:")


def read_csv_inputs(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "path" not in rows[0]:
        raise DataError(f"{path} has no 'path' column (found: {', '.join(rows[0])})")
    return [(row.get("id") or row["path"], str(path.parent / row["path"])) for row in rows]


class EmbeddingInputs(IterableDataset):
    """Decoded clips of the parts still to do, split across loader workers by part.

    Per file a record `{"part", "id", "path", "duration", "clips" [W, T], "lengths" [W], "starts" [W]}`
    or `{"part", "id", "path", "error"}`, and `{"part", "end": True}` after a part's last file. The
    records travel in bundles (`bundle`): one shared-memory tensor per field for many files, not
    three per file, which cost more than the decoding they moved off the main process.
    """

    bundle_windows = 32  # windows per bundle; a part's end also closes its bundle

    def __init__(self, parts: Sequence[Part], todo: Sequence[int], sample_rate: int, clip_samples: int,
                 pad_mode: str, long_audio: str, hop_seconds: float) -> None:
        self.parts, self.todo = parts, list(todo)
        self.sample_rate, self.clip_samples, self.pad_mode = sample_rate, clip_samples, pad_mode
        self.long_audio, self.hop_seconds = long_audio, hop_seconds

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        mine = self.todo if info is None else self.todo[info.id::info.num_workers]
        pending: list[dict[str, Any]] = []
        for index in mine:
            for item_id, source, data in iter_part(self.parts[index]):
                pending.append({"part": index, **self.decode(item_id, source, data)})
                if sum(len(r.get("clips", ())) for r in pending) >= self.bundle_windows:
                    yield bundle(pending)
                    pending = []
            pending.append({"part": index, "end": True})
            yield bundle(pending)
            pending = []

    def decode(self, item_id: str, path: str, data: Optional[bytes]) -> dict[str, Any]:
        record = {"id": item_id, "path": path}
        try:
            if data is None:
                data = Path(path).read_bytes()
            # "first" decodes only what the clip needs (frames counted at the header's rate)
            wanted = None if self.long_audio == "windows" else (
                lambda rate: frames_needed(self.clip_samples, rate, self.sample_rate))
            wave, rate, total = read_clip(data, wanted, None)
            if self.long_audio == "windows":
                clips, lengths, starts = prepare_windows(wave, rate, self.sample_rate, self.clip_samples,
                                                         self.hop_seconds, self.pad_mode)
            else:
                clips, lengths = prepare_audio([wave], rate, self.sample_rate, self.clip_samples, self.pad_mode)
                starts = torch.zeros(1)
        except Exception as err:  # noqa: BLE001 - any undecodable file is listed and skipped
            return {**record, "error": f"{type(err).__name__}: {first_line(err)}"}
        return {**record, "duration": total / rate, "clips": clips, "lengths": lengths, "starts": starts}


def bundle(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Records with their tensors concatenated across files (`unbundle` restores them)."""
    decoded = [r for r in records if "clips" in r]
    for r in decoded:
        r["windows"] = len(r["clips"])
    tensors = {key: torch.cat([r.pop(key) for r in decoded]) if decoded else torch.empty(0)
               for key in ("clips", "lengths", "starts")}
    return {"records": records, **tensors}


def unbundle(bundled: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The records of a bundle, each decoded one with its own views of the bundle's tensors."""
    at = 0
    for record in bundled["records"]:
        if "windows" in record:
            n = record.pop("windows")
            record.update({key: bundled[key][at:at + n] for key in ("clips", "lengths", "starts")})
            at += n
        yield record


def iter_part(part: Part) -> Iterator[tuple[str, str, Optional[bytes]]]:
    """(id, path or shard key, encoded bytes or None to read the path) of each file of a part."""
    if part.shard is None:
        for item_id, path in part.files:
            yield item_id, path, None
        return
    skipped: Counter = Counter()
    for sample in read_tar_samples(part.shard, skipped):
        audio_ext = next((ext for ext in ("flac", "wav", "mp3", "ogg") if ext in sample), None)
        if audio_ext is not None:
            yield sample["__key__"], f"{part.shard}#{sample['__key__']}", sample[audio_ext]
    for reason, count in skipped.items():
        log.warning("shard %s: %d skipped (%s)", part.shard, count, reason)


class PartWriter:
    """Collect one part's embeddings and write its files whole when the part is complete."""

    def __init__(self, out_dir: Path, index: int, with_windows: bool) -> None:
        self.out_dir, self.index, self.with_windows = out_dir, index, with_windows
        self.rows: list[dict[str, Any]] = []  # one per clip, in input order
        self.windows: dict[int, torch.Tensor] = {}  # clip row -> window embeddings [W, D]
        self.waiting = 0  # clips whose windows are still in the model's queue
        self.bad: list[tuple[str, str]] = []
        self.ended = False

    def add(self, record: dict[str, Any]) -> Optional[int]:
        """Register a decoded file; returns its row number (None for a bad file)."""
        if "error" in record:
            self.bad.append((record["path"], record["error"]))
            return None
        self.rows.append({"row": len(self.rows), "id": record["id"], "path": record["path"],
                          "duration": round(record["duration"], 4), "windows": len(record["clips"]),
                          "starts": record["starts"].tolist()})
        self.waiting += 1
        return len(self.rows) - 1

    def done(self, row: int, window_emb: torch.Tensor) -> None:
        self.windows[row] = window_emb
        self.waiting -= 1

    @property
    def complete(self) -> bool:
        return self.ended and self.waiting == 0

    def write(self, clip_seconds: float) -> int:
        """Write the part's files (the `.csv` last, renamed into place); returns its clip count."""
        stem = self.out_dir / f"part-{self.index:06d}"
        d = next(iter(self.windows.values())).shape[1] if self.windows else 0
        ordered = [self.windows[r["row"]] for r in self.rows]
        pooled = torch.stack([pool_windows(w) for w in ordered]) if ordered else torch.empty(0, d)
        staged = [(stem.with_suffix(".npy"), array_bytes(pooled.numpy()))]
        if self.with_windows:
            flat = torch.cat(ordered) if ordered else torch.empty(0, d)
            staged.append((Path(f"{stem}.windows.npy"), array_bytes(flat.numpy())))
            times = [(r["id"], round(s, 4), round(s + clip_seconds, 4)) for r in self.rows for s in r["starts"]]
            staged.append((Path(f"{stem}.windows.csv"), csv_bytes(["id", "start", "end"], times)))
        if self.bad:
            staged.append((Path(f"{stem}.bad.csv"), csv_bytes(["path", "reason"], self.bad)))
        rows = [(r["row"], r["id"], r["path"], r["duration"], r["windows"]) for r in self.rows]
        staged.append((stem.with_suffix(".csv"), csv_bytes(["row", "id", "path", "duration", "windows"], rows)))
        for path, data in staged:  # the .csv is last: its presence marks the part complete
            write_atomic(path, data)
        return len(self.rows)


def array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return buffer.getvalue()


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def part_is_done(out_dir: Path, index: int) -> bool:
    return (out_dir / f"part-{index:06d}.csv").is_file()


def check_settings(out_dir: Path, settings: IndexSettings) -> None:
    """Record the settings of a new index, or refuse to resume one built with other settings."""
    path = out_dir / SETTINGS
    wanted = {"format": INDEX_FORMAT, **asdict(settings)}
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError as err:
            raise IndexBuildError(f"{path} is not valid JSON ({err}); remove the index to rebuild it") from None
        differ = [f"{key} {found.get(key)!r} -> {value!r}" for key, value in wanted.items() if found.get(key) != value]
        if differ:
            raise IndexBuildError(f"{out_dir} holds an index built with other settings ({'; '.join(differ)}); "
                              f"use another --out or the same settings to resume")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise IndexBuildError(f"{out_dir} is not empty and holds no {SETTINGS}; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(wanted, indent=2) + "\n").encode())


@dataclass
class IndexSummary:
    clips: int  # clips embedded in this run
    bad: int  # files skipped in this run
    parts_skipped: int  # parts found complete and not redone
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.clips / max(self.seconds, 1e-9)


def build_index(model: CLAP, settings: IndexSettings, out_dir: str | Path, batch_size: int = 64,
                num_workers: int = 2, progress: bool = True) -> IndexSummary:
    """Embed `settings.inputs` into `out_dir`, resuming where an earlier run of the same settings stopped."""
    out_dir = Path(out_dir)
    if settings.long_audio not in ("first", "windows"):
        raise IndexBuildError(f"long_audio must be 'first' or 'windows', got {settings.long_audio!r}")
    if batch_size < 1 or num_workers < 0 or settings.part_size < 1 or settings.hop_seconds <= 0:
        raise IndexBuildError("batch size, part size and hop must be positive and workers >= 0")
    parts = list_parts(settings.inputs, settings.part_size)
    check_settings(out_dir, settings)
    todo = [i for i in range(len(parts)) if not part_is_done(out_dir, i)]
    inputs = EmbeddingInputs(parts, todo, model.config.sample_rate, model.config.clip_samples,
                             model.pad_mode, settings.long_audio, settings.hop_seconds)
    loader = DataLoader(inputs, batch_size=None, num_workers=num_workers, collate_fn=pass_through)
    total = sum(len(parts[i].files) for i in todo) or None  # unknown for shards
    bar = make_progress(total, progress)
    writers: dict[int, PartWriter] = {}
    queue: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (part, row, clips [W, T], lengths [W])
    clips = bad = 0
    start = time.perf_counter()

    def flush() -> None:
        nonlocal clips
        if not queue:
            return
        for (index, row), emb in zip(((p, r) for p, r, _, _ in queue), embed_queue(model, queue, batch_size)):
            writers[index].done(row, emb)
        queue.clear()
        for index in [i for i, w in writers.items() if w.complete]:
            clips += writers.pop(index).write(model.config.clip_seconds)

    with torch.no_grad():
        for record in (record for bundled in loader for record in unbundle(bundled)):
            writer = writers.setdefault(record["part"], PartWriter(out_dir, record["part"],
                                                                   settings.long_audio == "windows"))
            if record.get("end"):
                writer.ended = True
                if writer.waiting == 0:  # nothing of this part is queued: write it now
                    clips += writers.pop(record["part"]).write(model.config.clip_seconds)
                continue
            row = writer.add(record)
            bar.update(1)
            if row is None:
                bad += 1
                continue
            queue.append((record["part"], row, record["clips"], record["lengths"]))
            if sum(len(q[2]) for q in queue) >= batch_size:
                flush()
                bar.set_postfix_str(f"{clips / max(time.perf_counter() - start, 1e-9):.1f} clips/s")
        flush()
    bar.close()
    return IndexSummary(clips, bad, len(parts) - len(todo), time.perf_counter() - start)


def pass_through(record: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate: records are batched for the model by `build_index`, not by the loader."""
    return record


def embed_queue(model: CLAP, queue: list[tuple[int, int, torch.Tensor, torch.Tensor]],
                batch_size: int) -> list[torch.Tensor]:
    """Window embeddings [W, D] of each queued clip, computed in batches of `batch_size` windows."""
    embs = embed_clips(model, torch.cat([q[2] for q in queue]), torch.cat([q[3] for q in queue]), batch_size).cpu()
    return list(torch.split(embs, [len(q[2]) for q in queue]))


def make_progress(total: Optional[int], enabled: bool):
    return tqdm(total=total, unit="clip", disable=not enabled, dynamic_ncols=True, mininterval=1.0)


@dataclass
class Index:
    """A built index, loaded: embeddings [N, D] and their rows (id, path, duration, windows)."""

    settings: dict
    embeddings: torch.Tensor
    rows: list[dict[str, str]]
    window_embeddings: Optional[torch.Tensor] = None  # [sum W, D]
    window_rows: Optional[list[dict[str, str]]] = None  # id, start, end


def load_index(index_dir: str | Path) -> Index:
    """Read every complete part of an index, in part order."""
    index_dir = Path(index_dir)
    if not (index_dir / SETTINGS).is_file():
        raise IndexBuildError(f"{index_dir} is not an index (no {SETTINGS}); build one with `clap-lightning embed`")
    settings = json.loads((index_dir / SETTINGS).read_text())
    embs, rows, win_embs, win_rows = [], [], [], []
    for table in sorted(index_dir.glob("part-[0-9][0-9][0-9][0-9][0-9][0-9].csv")):
        embs.append(torch.from_numpy(np.load(table.with_suffix(".npy"))))
        rows += read_rows(table)
        windows = table.with_name(table.stem + ".windows.npy")
        if windows.is_file():
            win_embs.append(torch.from_numpy(np.load(windows)))
            win_rows += read_rows(table.with_name(table.stem + ".windows.csv"))
    d = embs[0].shape[1] if embs else 0
    return Index(settings, torch.cat(embs) if embs else torch.empty(0, d), rows,
                 torch.cat(win_embs) if win_embs else None, win_rows or None)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Hit:
    score: float
    id: str
    path: str
    start: Optional[float] = None  # best-matching window, when the index has windows
    end: Optional[float] = None


def search_index(index: Index, query_emb: torch.Tensor, k: int = 10) -> list[Hit]:
    """The `k` clips nearest to an L2-normalised query embedding [D] (exact cosine search).

    Exact search costs O(N·D) per query: fine for a few million clips on one machine; past that, put
    the `.npy` parts into an approximate index (faiss `IndexFlatIP`/`IndexIVFPQ` take them as they are).
    """
    if len(index.rows) == 0:
        return []
    scores = index.embeddings.float() @ query_emb.float()
    top = torch.topk(scores, min(k, len(scores)))
    hits = []
    window_offsets = np.cumsum([0] + [int(r["windows"]) for r in index.rows]) if index.window_rows else None
    for score, row in zip(top.values.tolist(), top.indices.tolist()):
        hit = Hit(score, index.rows[row]["id"], index.rows[row]["path"])
        if window_offsets is not None:
            lo, hi = window_offsets[row], window_offsets[row + 1]
            best = lo + int(torch.argmax(index.window_embeddings[lo:hi].float() @ query_emb.float()))
            hit.start, hit.end = float(index.window_rows[best]["start"]), float(index.window_rows[best]["end"])
        hits.append(hit)
    return hits


def embed_texts_to(model: CLAP, texts: Sequence[str], out_dir: str | Path) -> int:
    """Write `text.npy` [N, D] and `text.csv` (row, text) for captions or queries; returns N."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    embs = model.embed_text(list(texts))
    write_atomic(out_dir / "text.npy", array_bytes(embs.numpy()))
    write_atomic(out_dir / "text.csv", csv_bytes(["row", "text"], list(enumerate(texts))))
    return len(texts)
