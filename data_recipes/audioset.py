"""audioset: AudioSet 10 s YouTube segments with template captions from their labels.

Source: Gemmeke et al. 2017, research.google.com/audioset. Only segment lists are
official; the audio must be downloaded from YouTube (yt-dlp) or taken from a mirror.
Licence: lists CC BY 4.0, ontology CC BY-SA 4.0; the audio belongs to the uploaders.

Layout (`--src`)::

    balanced_train_segments.csv      3 comment lines, the last is the header
    unbalanced_train_segments.csv    "# YTID, start_seconds, end_seconds, positive_labels"
    eval_segments.csv                positive_labels: quoted, comma-joined MIDs
    class_labels_indices.csv         index,mid,display_name (527 rows)
    audios/<list>/Y<ytid>.wav        the 10 s segment, as PANNs' downloader names it
                                     (also found: <ytid>.wav, Y<ytid>.flac)

Splits: "train" = balanced + unbalanced lists (option `train_lists`), "test" = eval.
Captions: 2 of `TEMPLATES`, filled with the MIDs' display names ("the sound of Speech, Dog
and Bark"); the names are kept in `labels`, the MIDs in `mids`. Ids: `<ytid>_<start s>`;
cross-corpus id `youtube:<ytid>` (AudioCaps, AudioSet_SL and DCASE17 share it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_recipes.base import RecipeError, register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, first_existing, join_words, missing_fields,
                                 parse_float, pick_captions, read_csv, row_error)

TEMPLATES = (
    "the sound of {labels}",
    "{labels} can be heard",
    "a recording of {labels}",
    "an audio clip containing {labels}",
    "this is a sound of {labels}",
)
_LISTS = {"balanced_train": "balanced_train_segments", "unbalanced_train": "unbalanced_train_segments",
          "eval": "eval_segments"}


@dataclasses.dataclass
class AudioSetConfig:
    """Which segment lists make the train split and where the audio is."""

    train_lists: str = "balanced_train,unbalanced_train"  # comma-separated: balanced_train, unbalanced_train
    audio_dir: str = "audios"  # audio root under --src, one folder per list


def read_label_names(path: Path) -> dict[str, str]:
    """MID -> display name from `class_labels_indices.csv`."""
    return {row["mid"]: row["display_name"] for row in read_csv(path) if row.get("mid")}


@register_recipe
class AudioSetRecipe(ClipRecipe):
    """AudioSet 10 s segments (2M, 527 classes), template captions from labels."""

    name = "audioset"
    version = "1"
    splits = ("train", "test")
    config_cls = AudioSetConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        names = read_label_names(src / "class_labels_indices.csv")
        lists = ["eval"] if split == "test" else [s.strip() for s in self.config.train_lists.split(",") if s.strip()]
        items: list[ClipItem | BadRow] = []
        for name in lists:
            if name not in _LISTS or name == "eval" and split == "train":
                raise RecipeError(f"unknown AudioSet train list '{name}'; known: balanced_train, unbalanced_train")
            path = src / f"{_LISTS[name]}.csv"
            rows = read_csv(path, comment="#")
            items += [self._item(src, name, path, i, row, names) for i, row in enumerate(rows, 1)]
        return items

    def _item(
        self, src: Path, name: str, path: Path, index: int, row: dict, names: dict[str, str]
    ) -> ClipItem | BadRow:
        missing = missing_fields(row, ("YTID", "start_seconds", "end_seconds", "positive_labels"))
        start, end = parse_float(row.get("start_seconds")), parse_float(row.get("end_seconds"))
        if missing or start is None or end is None:
            return row_error(path, index, f"missing or bad {missing or 'start/end'}")
        mids = [m.strip() for m in row["positive_labels"].split(",") if m.strip()]
        unknown = [m for m in mids if m not in names]
        if unknown or not mids:
            return BadRow(
                "unknown_label", f"{path.name} row {index}: MIDs {unknown or mids} not in class_labels_indices.csv"
            )
        ytid = row["YTID"]
        labels = tuple(names[m] for m in mids)
        folder = src / self.config.audio_dir / _LISTS[name]
        candidates = [folder / f"Y{ytid}.wav", folder / f"{ytid}.wav", folder / f"Y{ytid}.flac"]
        audio = first_existing(candidates) or candidates[0]
        key = f"{ytid}_{start:.0f}"
        captions = pick_captions(TEMPLATES, key, 2, labels=join_words(labels))
        meta = {"mids": mids, "ytid": ytid, "start_seconds": start, "segment_list": _LISTS[name]}
        return ClipItem(
            key, str(audio), captions, labels, alt_ids=(f"youtube:{ytid}",), meta=meta, duration=end - start
        )
