"""Helpers shared by the corpus recipes: clip items, audio reading, metadata files, splits, captions.

Most corpora ship their metadata in one place and their audio in another, so every
recipe here follows one pattern: `items()` reads the metadata into `ClipItem`s (audio
path, optional segment, captions, labels, extra json fields) and `ClipRecipe.load()` only
reads the audio. A malformed metadata row becomes a `BadRow` item, so the shared writer
reports and counts it with the missing and unreadable audio files, under its reason.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import soundfile as sf

from data_recipes.base import Recipe, RecipeError, Sample, SkipSample

# Key under which `read_csv` keeps the cells of a row beyond the header's columns.
EXTRA_CELLS = "\x00extra_cells"
# Containers soundfile cannot read; their audio track is decoded by the ffmpeg binary.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4a")


@dataclasses.dataclass
class ClipItem:
    """One clip to write: where its audio is and everything its json will hold."""

    id: str  # corpus-unique stable id (the sample key is `<source>-<id>`)
    path: str  # audio or video file
    text: tuple[str, ...]  # captions, at least one
    labels: tuple[str, ...] = ()  # class labels, kept raw in json "labels"
    start: float | None = None  # segment start in seconds (None: from the beginning)
    end: float | None = None  # segment end in seconds (None: to the end)
    alt_ids: tuple[str, ...] = ()  # cross-corpus ids for --exclude, e.g. "freesound:1234", "youtube:abc"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra json fields
    duration: float | None = None  # known duration in seconds, for --max-shard-bytes planning

    def __post_init__(self) -> None:
        if isinstance(self.text, str):  # one caption given as a string: never its letters
            self.text = (self.text,)


@dataclasses.dataclass
class BadRow:
    """A metadata row that could not be turned into a clip; the writer counts it under `reason`."""

    reason: str  # e.g. "malformed_row", "no_caption"
    detail: str  # what was wrong, with the file and row


class ClipRecipe(Recipe):
    """A recipe whose `items()` returns `ClipItem`/`BadRow`s; `load()` reads the audio."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if isinstance(self.config, HeldOutConfig) and self.config.test_fraction <= 0:
            self.splits = tuple(s for s in self.splits if s != "test")  # nothing is held out

    def load(self, item: ClipItem | BadRow, sample_rate: int) -> Sample:
        """Read the item's audio (segment) and attach its captions and metadata."""
        if isinstance(item, BadRow):
            raise SkipSample(item.reason, item.detail)
        audio, rate = read_audio(item.path, item.start, item.end, sample_rate)
        meta: dict[str, Any] = {"text": list(item.text), **item.meta}
        if item.labels:
            meta["labels"] = list(item.labels)
        if item.start is not None or item.end is not None:
            meta.setdefault("segment", [item.start or 0.0, item.end])
        return Sample(item.id, audio, rate, meta)

    def match_ids(self, item: ClipItem | BadRow) -> tuple[str, ...]:
        """Ids `--exclude` matches against: the stable id and the cross-corpus ids."""
        return () if isinstance(item, BadRow) else (item.id, *item.alt_ids)

    def estimate_bytes(self, item: ClipItem | BadRow, sample_rate: int) -> int | None:
        """16-bit PCM size of the known duration plus 2 KiB; None when the duration is unknown."""
        if isinstance(item, BadRow):
            return 0
        seconds = item.duration
        if item.start is not None and item.end is not None:
            seconds = item.end - item.start
        return None if seconds is None else int(seconds * sample_rate) * 2 + 2048


# ---------------------------------------------------------------------------------------
# Audio


def read_audio(path: str | Path, start: float | None = None, end: float | None = None,
               target_rate: int = 44100) -> tuple[np.ndarray, int]:
    """Read a file or a [start, end) segment of it as float32 [C, T]; return (audio, rate).

    Audio files are read with soundfile (seeking to the segment); video containers are
    decoded by ffmpeg at `target_rate`.

    Raises:
        SkipSample: the file is missing ("missing_audio"), unreadable ("unreadable_audio")
            or the segment holds nothing ("empty_segment").
    """
    path = Path(path)
    if not path.is_file():
        raise SkipSample("missing_audio", str(path))
    if path.suffix.lower() in VIDEO_SUFFIXES:
        audio, rate = read_audio_ffmpeg(path, start, end, target_rate), target_rate
    else:
        try:
            with sf.SoundFile(str(path)) as f:
                rate = f.samplerate
                first = max(0, int(round((start or 0.0) * rate)))
                last = f.frames if end is None else min(f.frames, int(round(end * rate)))
                if first >= last:
                    raise SkipSample("empty_segment", f"{path} [{start}, {end}) s of {f.frames / rate:.3f} s")
                f.seek(first)
                audio = f.read(last - first, dtype="float32", always_2d=True).T
        except sf.LibsndfileError as err:
            raise SkipSample("unreadable_audio", f"{path}: {err}") from None
    if audio.shape[-1] == 0:
        raise SkipSample("empty_segment", str(path))
    return np.ascontiguousarray(audio), rate


def require_ffmpeg(corpus: str) -> str:
    """Return the ffmpeg binary's path, or raise one clear line saying the corpus needs it."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise RecipeError(f"corpus '{corpus}' extracts audio from video files and needs the ffmpeg binary, "
                         "which is not on PATH (install it, e.g. `apt-get install ffmpeg`)")
    return binary


def read_audio_ffmpeg(path: Path, start: float | None, end: float | None, rate: int) -> np.ndarray:
    """Decode the audio track of a video (or any ffmpeg input) to mono float32 [1, T] at `rate`."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise SkipSample("no_ffmpeg", f"ffmpeg is needed to read {path}")
    cmd = [binary, "-nostdin", "-v", "error"]
    if start:
        cmd += ["-ss", f"{max(0.0, start):.3f}"]
    cmd += ["-i", str(path)]
    if end is not None:
        cmd += ["-t", f"{end - max(0.0, start or 0.0):.3f}"]
    cmd += ["-vn", "-ac", "1", "-ar", str(rate), "-f", "s16le", "-acodec", "pcm_s16le", "-"]
    result = subprocess.run(cmd, capture_output=True, timeout=600)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        last = message[-1] if message else "ffmpeg failed"
        silent = "does not contain any stream" in last or "matches no streams" in last
        raise SkipSample("no_audio_track" if silent else "unreadable_audio", f"{path}: {last}")
    pcm = np.frombuffer(result.stdout, dtype="<i2")
    if pcm.size == 0:
        raise SkipSample("no_audio_track", str(path))
    return (pcm.astype(np.float32) / 32768.0)[None, :]


# ---------------------------------------------------------------------------------------
# Metadata files


def read_text(path: Path) -> str:
    """Read a text file as UTF-8 (BOM stripped), falling back to cp1252 for legacy exports."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_csv(path: Path, delimiter: str = ",", fieldnames: Sequence[str] | None = None,
             comment: str | None = None) -> list[dict[str, str]]:
    """Read a csv/tsv into dicts (keys and values stripped).

    Cells beyond the header's columns (often an unquoted delimiter inside a caption) are
    kept as a list under `EXTRA_CELLS`, so a recipe can count the row as malformed.

    Args:
        fieldnames: column names for a file without a header row.
        comment: lines starting with this are skipped (the header may follow it, e.g. AudioSet's "# YTID").

    Raises:
        FileNotFoundError: one line naming the missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} not found")
    lines = read_text(path).splitlines()
    if comment is not None and fieldnames is None:
        # The last comment line before the data is the header (AudioSet's "# YTID, start_seconds, ...").
        header = [line for line in lines if line.startswith(comment)]
        lines = [line for line in lines if line.strip() and not line.startswith(comment)]
        if header:
            lines.insert(0, header[-1][len(comment):])
    reader = csv.DictReader(io.StringIO("\n".join(lines)), fieldnames=fieldnames, delimiter=delimiter,
                            skipinitialspace=True, restkey=EXTRA_CELLS)
    rows = []
    for row in reader:
        clean = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        rows.append(clean)
    return rows


def read_json(path: Path) -> Any:
    """Read a json file; FileNotFoundError / ValueError in one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} not found")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise RecipeError(f"metadata file {path} is not valid json: {err}") from None


def row_error(path: Path, index: int, problem: str) -> BadRow:
    """A `BadRow` for data row `index` (1-based) of a metadata file."""
    return BadRow("malformed_row", f"{Path(path).name} row {index}: {problem}")


def missing_fields(row: dict[str, Any], fields: Iterable[str]) -> list[str]:
    """Return the fields of `row` that are absent or empty."""
    return [f for f in fields if row.get(f) in (None, "")]


def parse_float(value: Any) -> float | None:
    """Float of a metadata value, or None when it is not a finite number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def parse_timestamp(text: str) -> float | None:
    """Seconds of 'HH:MM:SS.ff', 'MM:SS.ff' or plain seconds; None when malformed."""
    parts = str(text).strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if len(values) > 3 or any(v < 0 for v in values):
        return None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """Return the first existing file among `candidates`, else None."""
    for path in candidates:
        if path.is_file():
            return path
    return None


def audio_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    """All files under `root` with one of `extensions` (no dot, any case), sorted by relative path."""
    wanted = {"." + e.lower().lstrip(".") for e in extensions}
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in wanted and p.is_file())


# ---------------------------------------------------------------------------------------
# Splits


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` (sha1), the same on every machine and rebuild."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def hash_split(key: str, test_fraction: float, valid_fraction: float = 0.0) -> str:
    """Assign `key` to "test", "valid" or "train" by its stable fraction.

    Unlike LAION's unseeded random split, a clip keeps its split when the corpus grows.
    """
    x = stable_fraction(key)
    if x < test_fraction:
        return "test"
    if x < test_fraction + valid_fraction:
        return "valid"
    return "train"


def split_by_hash(items: list[ClipItem | BadRow], split: str, test_fraction: float) -> list[ClipItem | BadRow]:
    """Keep the items `hash_split` puts in `split`; bad rows are reported once, with "train"."""
    return [it for it in items
            if (split == "train" if isinstance(it, BadRow) else hash_split(it.id, test_fraction) == split)]


@dataclasses.dataclass
class HeldOutConfig:
    """Options of corpora without an official split: a stable hash split (LAION holds out 10 %)."""

    test_fraction: float = 0.1  # share of clips (by stable id hash) in split "test"; 0 puts all in "train"


# ---------------------------------------------------------------------------------------
# Captions

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean_text(text: Any) -> str:
    """Strip HTML tags and entities, collapse whitespace."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", str(text or "")))).strip()


def join_words(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = [w for w in words if w]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def unique(texts: Iterable[str]) -> tuple[str, ...]:
    """Non-empty texts in order, duplicates dropped."""
    seen: dict[str, None] = {}
    for t in texts:
        t = clean_text(t)
        if t and t not in seen:
            seen[t] = None
    return tuple(seen)


def pick_captions(templates: Sequence[str], key: str, count: int = 2, **fields: Any) -> tuple[str, ...]:
    """Fill `count` distinct templates, chosen by `key`'s hash, with `fields`.

    Every clip gets the same captions on every rebuild, and across a corpus every
    template is used about equally often.
    """
    start = int(stable_fraction(key + "#templates") * len(templates))
    chosen = [templates[(start + i * 7) % len(templates)] for i in range(len(templates))]
    return unique(t.format(**fields) for t in chosen)[:count]


def label_phrase(label: str) -> str:
    """A label as words: underscores to spaces, CamelCase split, 'Dog_bark' -> 'dog bark'."""
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label.replace("_", " "))
    return _SPACE.sub(" ", words).strip().lower() if words.isupper() or words.istitle() else words.strip()


# Transcript-aware captions for speech corpora ({speaker}: "a woman", "a man", "a person").
SPEECH_TEMPLATES = (
    '{speaker} says "{transcript}"',
    '{speaker} is saying "{transcript}"',
    'a recording of {speaker} saying "{transcript}"',
    'speech: "{transcript}"',
    '{speaker} speaks the words "{transcript}"',
)
# Label-aware (and transcript-aware, when a transcript exists) captions for emotion corpora.
EMOTION_TEMPLATES = (
    '{speaker} says "{transcript}" in a {emotion} voice',
    '{speaker} sounds {emotion} while saying "{transcript}"',
    'a {emotion} utterance: "{transcript}"',
    '{speaker} speaking with {emotion} emotion says "{transcript}"',
)
EMOTION_ONLY_TEMPLATES = (
    "{speaker} speaking in a {emotion} voice",
    "a {emotion} sounding person talking",
    "speech with {emotion} emotion",
    "{speaker} sounds {emotion}",
)


def speech_captions(transcript: str, key: str, speaker: str = "a person", count: int = 2) -> tuple[str, ...]:
    """Transcript-aware captions, e.g. 'a woman says "hello there"'."""
    return pick_captions(SPEECH_TEMPLATES, key, count, speaker=speaker, transcript=clean_text(transcript))


def emotion_captions(emotion: str, key: str, transcript: str = "", speaker: str = "a person",
                     count: int = 2) -> tuple[str, ...]:
    """Emotion-aware captions; they quote the transcript when there is one."""
    transcript = clean_text(transcript)
    templates = EMOTION_TEMPLATES if transcript else EMOTION_ONLY_TEMPLATES
    return pick_captions(templates, key, count, speaker=speaker, emotion=emotion, transcript=transcript)


def sentiment_word(score: float) -> str:
    """A [-3, 3] sentiment score as a word (CMU-MOSI/MOSEI scale)."""
    for bound, word in ((-1.5, "very negative"), (-0.5, "negative"), (0.5, "neutral"), (1.5, "positive")):
        if score < bound:
            return word
    return "very positive"


def speaker_phrase(gender: str) -> str:
    """'F'/'Female' -> 'a woman', 'M'/'Male' -> 'a man', anything else -> 'a person'."""
    return {"f": "a woman", "m": "a man"}.get(str(gender).strip()[:1].lower(), "a person")
