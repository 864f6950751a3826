"""csv and folder: generic recipes, so a new corpus needs options, not code.

`csv`: one row per clip in a csv/tsv file under `--src`::

    python -m data_recipes build csv --src /data/mycorpus --out shards \\
        -o name=mycorpus -o file=meta.csv -o audio_column=path \\
        -o caption_columns=caption_1,caption_2 -o label_columns=category -o split_column=split

Audio paths are relative to `--src` (or `audio_root` under it). Captions come from the
caption columns (empty cells skipped); a row without one gets captions from `templates`
filled with its labels, and a row with neither is counted as "no_caption". Without a split
column every row is in "train", or a stable hash split holds out `test_fraction` as "test".
A row with more cells than the header is counted as "malformed_row"; a row whose id an
earlier row already has is counted as "duplicate_key" (the first row wins).
Optional: `id_column` (default: the audio path without extension), `start_column` /
`end_column` (segments, seconds), `meta_columns` (copied into the json), `license`.

`folder`: every audio file under `--src`; labels from the parent folder name
(`dog_bark/001.wav` -> "dog bark") or from the named group `label` of a regex `pattern`
matched against the path relative to `--src` (`-o "pattern=(?P<label>[a-z]+)_\\d+\\.wav"`).
With `split_folders=true` the first folder is the split (`train/dog/1.wav`); otherwise a
stable hash split holds out `test_fraction`. Captions: 2 of `templates` with the label.
Files whose label cannot be found are counted as "unknown_label".

Both take `name` (the corpus name used for shard folders, keys and json "source"; set it,
the default is the recipe's name) and `license` (stored in every json). Licence and
provenance are those of the corpus you point them at.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from data_recipes.base import RecipeError, register_recipe
from data_recipes.common import (EXTRA_CELLS, BadRow, ClipItem, ClipRecipe, audio_files, join_words, label_phrase,
                                 parse_float, pick_captions, read_csv, row_error, split_by_hash, unique)

DEFAULT_TEMPLATES = "the sound of {labels}|{labels} can be heard|a recording of {labels}|an audio clip of {labels}"
_NAME = re.compile(r"^[a-z0-9_]+$")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _hash_splits(config: Any) -> tuple[str, ...]:
    return ("train", "test") if config.test_fraction > 0 else ("train",)


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RecipeError(f"bad corpus name '{name}': expected lower-case letters, digits and '_'")
    return name


@dataclasses.dataclass
class CsvConfig:
    """Columns and conventions of a one-row-per-clip metadata table."""

    name: str = "csv"  # corpus name: shard folder, key prefix and json "source"
    file: str = "metadata.csv"  # metadata table under --src
    delimiter: str = ","  # column separator; "tab" for tsv
    audio_column: str = "audio"  # column with the audio path (relative to --src/audio_root)
    audio_root: str = ""  # folder under --src the audio paths are relative to
    caption_columns: str = "caption"  # comma-separated caption columns; empty cells are skipped
    label_columns: str = ""  # comma-separated label columns (optional)
    label_separator: str = ";"  # splits one label cell into several labels
    templates: str = DEFAULT_TEMPLATES  # '|'-separated captions for rows with labels but no caption
    split_column: str = ""  # column holding each row's split; empty: see test_fraction
    splits: str = "train,valid,test"  # split names the table uses (with split_column)
    test_fraction: float = 0.0  # without split_column: hash share held out as "test"
    id_column: str = ""  # stable id column; default: audio path without extension
    start_column: str = ""  # segment start in seconds (optional)
    end_column: str = ""  # segment end in seconds (optional)
    meta_columns: str = ""  # comma-separated columns copied into the json
    license: str = ""  # licence string stored in every json (optional)


@register_recipe
class CsvRecipe(ClipRecipe):
    """Generic: any corpus described by a csv/tsv table (audio path, captions, labels, split)."""

    name = "csv"
    version = "1"
    splits = ("train", "valid", "test")
    config_cls = CsvConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.name = _check_name(self.config.name)
        self.splits = tuple(_names(self.config.splits)) if self.config.split_column else _hash_splits(self.config)

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        cfg = self.config
        path = src / cfg.file
        delimiter = "\t" if cfg.delimiter in ("tab", "\\t") else cfg.delimiter
        rows = read_csv(path, delimiter=delimiter)
        needed = [cfg.audio_column, *_names(cfg.caption_columns), *_names(cfg.label_columns),
                  *(c for c in (cfg.split_column, cfg.id_column, cfg.start_column, cfg.end_column) if c)]
        absent = [c for c in needed if rows and c not in rows[0]]
        if absent:
            raise RecipeError(f"{path}: no column(s) {', '.join(absent)}; found {', '.join(rows[0])}")
        items = []
        for index, row in enumerate(rows, 1):
            if cfg.split_column and row.get(cfg.split_column) != split:
                continue
            items.append(self._item(src, path, index, row))
        return items if cfg.split_column else split_by_hash(items, split, cfg.test_fraction)

    def _item(self, src: Path, path: Path, index: int, row: dict[str, str]) -> ClipItem | BadRow:
        cfg = self.config
        if row.get(EXTRA_CELLS):
            extra = len(row[EXTRA_CELLS])
            return row_error(
                path, index, f"{extra} cell(s) beyond the header's {len(row) - 1} columns (an unquoted delimiter?)"
            )
        audio = row.get(cfg.audio_column) or ""
        if not audio:
            return row_error(path, index, f"empty {cfg.audio_column}")
        labels = unique(part for c in _names(cfg.label_columns)
                        for part in (row.get(c) or "").split(cfg.label_separator or None))
        stable_id = row.get(cfg.id_column, "") if cfg.id_column else str(Path(audio).with_suffix(""))
        captions = unique(row.get(c) or "" for c in _names(cfg.caption_columns))
        if not captions and labels:
            captions = pick_captions(cfg.templates.split("|"), stable_id, 2, labels=join_words(labels))
        if not captions or not stable_id:
            return BadRow("no_caption", f"{path.name} row {index}: no caption, no labels or no id")
        start = parse_float(row.get(cfg.start_column)) if cfg.start_column else None
        end = parse_float(row.get(cfg.end_column)) if cfg.end_column else None
        meta: dict[str, Any] = {c: row.get(c, "") for c in _names(cfg.meta_columns)}
        if cfg.license:
            meta["license"] = cfg.license
        return ClipItem(stable_id, str(src / cfg.audio_root / audio), captions, labels, start, end, meta=meta)


@dataclasses.dataclass
class FolderConfig:
    """How labels and splits follow from a folder of audio files."""

    name: str = "folder"  # corpus name: shard folder, key prefix and json "source"
    extensions: str = "wav,flac,mp3,ogg"  # comma-separated audio file extensions
    pattern: str = ""  # regex with a named group 'label' matched against the relative path; empty: parent folder
    split_folders: bool = False  # the first folder under --src is the split (train/valid/test)
    splits: str = "train,valid,test"  # split folder names (with split_folders)
    test_fraction: float = 0.1  # without split_folders: hash share held out as "test"
    templates: str = DEFAULT_TEMPLATES  # '|'-separated captions, filled with {labels}
    license: str = ""  # licence string stored in every json (optional)


@register_recipe
class FolderRecipe(ClipRecipe):
    """Generic: labels from folder names or a file-name regex, template captions."""

    name = "folder"
    version = "1"
    splits = ("train", "test")
    config_cls = FolderConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.name = _check_name(self.config.name)
        self.splits = tuple(_names(self.config.splits)) if self.config.split_folders else _hash_splits(self.config)
        try:
            self._pattern = re.compile(self.config.pattern) if self.config.pattern else None
        except re.error as err:
            raise RecipeError(f"bad folder pattern {self.config.pattern!r}: {err}") from None
        if self._pattern is not None and "label" not in self._pattern.groupindex:
            raise RecipeError(f"folder pattern {self.config.pattern!r} needs a named group (?P<label>...)")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        cfg = self.config
        root = src / split if cfg.split_folders else src
        if not root.is_dir():
            raise FileNotFoundError(f"split folder {root} not found")
        items = [self._item(root, path) for path in audio_files(root, _names(cfg.extensions))]
        return items if cfg.split_folders else split_by_hash(items, split, cfg.test_fraction)

    def _item(self, root: Path, path: Path) -> ClipItem | BadRow:
        relative = path.relative_to(root).as_posix()
        if self._pattern is not None:
            match = self._pattern.search(relative)
            label = match.group("label") if match else ""
        else:
            label = path.parent.name if path.parent != root else ""
        if not label:
            return BadRow("unknown_label", f"{relative}: no label from {'pattern' if self._pattern else 'folder'}")
        stable_id = str(Path(relative).with_suffix(""))
        words = label_phrase(label)
        captions = pick_captions(self.config.templates.split("|"), stable_id, 2, labels=words)
        meta = {"license": self.config.license} if self.config.license else {}
        return ClipItem(stable_id, str(path), captions, (label,), meta=meta)
