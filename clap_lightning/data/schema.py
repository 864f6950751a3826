"""The shard contract shared by the writer (`data_recipes`) and the reader (`ClapDataModule`).

Layout of one corpus split (docs/data.md)::

    <out>/<source>/<split>/<source>-<split>-000000.tar   samples: <key>.flac + <key>.json
    <out>/<source>/<split>/manifest.json                 shard list, counts, hours, build parameters
    <out>/<source>/<split>/sizes.json                    LAION-style {"<shard file name>": samples}

Shard names in `manifest.json` and `sizes.json` are relative to the split directory, so a
split directory can be copied or uploaded to an object store as a whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any


class ShardFormatError(ValueError):
    """A manifest or exclusion list is unreadable or not in this format (one line, with the path)."""


# Name of the per-split manifest; the reader starts from it.
MANIFEST_NAME = "manifest.json"
# LAION-style {"shard.tar": number of samples}, read by LAION-CLAP's loader.
SIZES_NAME = "sizes.json"
# Manifest of one `--part i/n` of a build; `merge` combines them into MANIFEST_NAME.
PART_MANIFEST_PATTERN = "manifest.part-{index}-of-{count}.json"
# Bumped when the manifest layout changes incompatibly.
MANIFEST_FORMAT = "clap-lightning-shards/1"
# Extensions of the two tar members of every sample.
AUDIO_EXT = "flac"
JSON_EXT = "json"
# Training formats (`python -m data_recipes prepare`), next to the archival FLAC: the member
# extension each stores a clip under. `logmel`: fp16 log-mel [frames, n_mels] as a .npy file, made
# by the front end the manifest records in `build.frontend`; `pcm16`: 16-bit WAV at the model rate.
TRAINING_FORMATS = {"logmel": "logmel.npy", "pcm16": "wav"}
LOGMEL_EXT = TRAINING_FORMATS["logmel"]

# Labels of the built-in demo corpus (`data_recipes/demo.py` makes it, the eval task `demo` scores it).
DEMO_CLASSES = (
    "sine tone", "square wave", "sawtooth wave", "bell", "plucked string", "chord", "white noise",
    "pink noise", "brown noise", "rising chirp", "falling chirp", "pulse train", "tremolo tone", "vibrato tone",
)

# json fields every sample carries, with the Python type(s) each must have.
REQUIRED_JSON_FIELDS: dict[str, tuple[type, ...]] = {
    "text": (list, str),  # a list of captions, or one caption
    "source": (str,),
    "id": (str,),
    "split": (str,),
    "duration": (float, int),
    "sample_rate": (int,),
}
# Keys every manifest (full or part) carries.
REQUIRED_MANIFEST_FIELDS = ("format", "source", "split", "recipe", "build", "shards", "num_samples", "hours", "skipped")

# webdataset splits a member name into key and extension at the FIRST dot of the base name
# and treats '/' as a directory, so those (and whitespace / control characters, which break
# shell globs and some tar tools) become '_' in keys.
_KEY_UNSAFE = re.compile(r"[./\\\s\x00-\x1f\x7f]")


def shard_name(source: str, split: str, index: int) -> str:
    """Return the file name of shard `index`: `<source>-<split>-%06d.tar`."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{source}-{split}-{index:06d}.tar"


def split_dir(out: str | Path, source: str, split: str) -> Path:
    """Return the directory holding the shards of one split: `<out>/<source>/<split>`."""
    return Path(out) / source / split


def shard_path(out: str | Path, source: str, split: str, index: int) -> Path:
    """Return `<out>/<source>/<split>/<source>-<split>-%06d.tar`."""
    return split_dir(out, source, split) / shard_name(source, split, index)


def part_manifest_name(index: int, count: int) -> str:
    """Return the manifest file name of part `index` of `count`."""
    return PART_MANIFEST_PATTERN.format(index=index, count=count)


def sample_key(source: str, stable_id: str) -> str:
    """Return the webdataset key `<source>-<id>` of a sample.

    '.', '/', '\\', whitespace and control characters in the id become '_' (webdataset cuts
    the key at the first '.'; '/' would make a directory). Distinct ids that differ only in
    those characters map to the same key; the writer keeps the first and skips the rest.
    """
    if not stable_id:
        raise ValueError(f"sample id must be a non-empty string, got {stable_id!r}")
    if _KEY_UNSAFE.search(source) or not source:
        raise ValueError(f"source name must be non-empty without '.', '/' or spaces, got {source!r}")
    return f"{source}-{_KEY_UNSAFE.sub('_', stable_id)}"


def read_captions(meta: Any) -> list[str]:
    """The captions of a sample json: its "text" list, or a plain string as one caption.

    LAION-style shards often store `"text": "a dog barks"`; iterating over that string would
    give one "caption" per character. Blank captions are dropped; no "text" gives [].

    Raises:
        ValueError: `meta` is not a json object, or "text" is neither a string nor a list of strings.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"expected a json object, found {type(meta).__name__}")
    text = meta.get("text")
    if text is None:
        return []
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise ValueError("field 'text' must be a string or a list of strings")
    return [t for t in text if t.strip()]


def validate_sample_json(d: Any) -> list[str]:
    """Return the problems that make `d` an invalid sample json (empty list if valid)."""
    if not isinstance(d, dict):
        return [f"expected a json object, found {type(d).__name__}"]
    problems = []
    for field, types in REQUIRED_JSON_FIELDS.items():
        if field not in d:
            problems.append(f"missing field '{field}'")
        elif isinstance(d[field], bool) or not isinstance(d[field], types):
            expected = " or ".join(t.__name__ for t in types)
            problems.append(f"field '{field}' must be {expected}, found {type(d[field]).__name__}")
    text = d.get("text")
    if isinstance(text, str) and not text.strip():
        problems.append("field 'text' is empty")
    elif isinstance(text, list):
        if not text:
            problems.append("field 'text' is empty")
        elif not all(isinstance(t, str) and t.strip() for t in text):
            problems.append("field 'text' must hold non-empty strings")
    duration = d.get("duration")
    if isinstance(duration, (int, float)) and not (math.isfinite(duration) and duration > 0):
        problems.append(f"field 'duration' must be > 0, found {duration}")
    rate = d.get("sample_rate")
    if isinstance(rate, int) and rate <= 0:
        problems.append(f"field 'sample_rate' must be > 0, found {rate}")
    labels = d.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        problems.append("field 'labels' must be a list of strings")
    return problems


# LAION-Audio-630K-style shards keep their labels in `tag`: read when the default `labels` is absent.
LABEL_FALLBACKS = {"labels": "tag"}


def read_labels(meta: dict, label_field: str) -> list[str]:
    """A clip's labels as strings: a list field as is, a scalar (NSynth pitch 60) as one label.

    With the default field `labels` absent, LAION-style `tag` is read instead (`LABEL_FALLBACKS`).
    """
    value = meta.get(label_field)
    if value is None and label_field in LABEL_FALLBACKS:
        value = meta.get(LABEL_FALLBACKS[label_field])
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def read_manifest(split_dir_path: str | Path, name: str = MANIFEST_NAME,
                  required: tuple[str, ...] = REQUIRED_MANIFEST_FIELDS) -> dict[str, Any]:
    """Read and check the manifest of a split directory.

    Args:
        required: keys that must be present (the loader asks only for `shards`, so a
            hand-written manifest listing shards and counts serves too).

    Raises:
        FileNotFoundError: the directory or its manifest is missing (one line, with the path).
        ValueError: the manifest is not valid json or lacks a required key.
    """
    path = Path(split_dir_path) / name
    if not path.is_file():
        raise FileNotFoundError(f"no shard manifest at {path} (build the split with `python -m data_recipes build`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardFormatError(f"manifest {path} is not valid json: {err}") from None
    if not isinstance(manifest, dict):
        raise ShardFormatError(f"manifest {path} is not a json object (found {type(manifest).__name__})")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise ShardFormatError(f"manifest {path} lacks required keys: {', '.join(missing)}")
    if "format" in manifest and manifest["format"] != MANIFEST_FORMAT:
        raise ShardFormatError(f"manifest {path} has format {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def manifest_shard_paths(split_dir_path: str | Path) -> list[Path]:
    """Return the absolute paths of the non-empty shards listed in a split's manifest."""
    manifest = read_manifest(split_dir_path)
    return [Path(split_dir_path).resolve() / shard["name"] for shard in manifest["shards"]]


def read_exclude_file(path: str | Path) -> frozenset[str]:
    """Read a leakage exclusion list: a json list, or one id per line ('#' starts a comment).

    Entries are compared with each item's `Recipe.match_ids` (its stable id and cross-corpus
    ids such as "freesound:1234" or "youtube:<ytid>") and with its sample key `<source>-<id>`.
    Training configs name the same file (`data.exclude_list`) to check the shards were built with it.

    Raises:
        FileNotFoundError / ValueError: one line naming the file and what was wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exclusion list {path} not found")
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise ShardFormatError(f"exclusion list {path} is not a valid json list: {err}") from None
        if not all(isinstance(e, (str, int)) and not isinstance(e, bool) for e in entries):
            raise ShardFormatError(f"exclusion list {path}: expected a json list of string or integer ids")
    else:
        entries = [line.split("#", 1)[0] for line in text.splitlines()]
    ids = frozenset(str(e).strip() for e in entries if str(e).strip())
    if not ids:
        raise ShardFormatError(f"exclusion list {path} lists no ids")
    return ids


def exclude_digest(ids: frozenset[str]) -> str:
    """The sha1 a manifest records for the exclusion list a split was built with (`build.exclude.sha1`)."""
    return hashlib.sha1("\n".join(sorted(ids)).encode("utf-8")).hexdigest()
