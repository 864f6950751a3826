"""audiocaps: AudioCaps, human captions of AudioSet 10 s segments (1 per train clip, 5 per val/test clip).

Source: Kim et al. 2019, github.com/cdjkim/audiocaps (`dataset/{train,val,test}.csv`); the
audio is the AudioSet YouTube segment [start_time, start_time + 10 s], which you download
yourself. Licence: captions "free to use for academic purposes"; audio belongs to the uploaders.

Layout (`--src`)::

    dataset/train.csv  val.csv  test.csv     audiocap_id,youtube_id,start_time,caption (one row per caption)
    audio/<split>/<youtube_id>.wav           the 10 s segment (option `audio_pattern`; fields:
                                             {split} train/val/test, {youtube_id}, {start_time},
                                             {audiocap_id} of the first caption row)

With `-o cut_segment=true` the audio files are whole videos' audio and the recipe cuts
[start_time, start_time + 10 s] itself.

Splits: train -> "train", val -> "valid", test -> "test" (CLAP-2023 kept the test set out).
Captions: all rows of a (youtube_id, start_time) pair, in csv order.
Ids: `<youtube_id>_<start_time>`; cross-corpus id `youtube:<youtube_id>`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, missing_fields, parse_float, read_csv, row_error, unique

_FILES = {"train": "train", "valid": "val", "test": "test"}


@dataclasses.dataclass
class AudioCapsConfig:
    """Where the downloaded audio is."""

    audio_pattern: str = "audio/{split}/{youtube_id}.wav"  # audio path under --src
    cut_segment: bool = False  # the files hold whole videos: cut [start_time, start_time + 10 s]


@register_recipe
class AudioCapsRecipe(ClipRecipe):
    """AudioCaps (~51k AudioSet segments with human captions); academic use."""

    name = "audiocaps"
    version = "1"
    splits = ("train", "valid", "test")
    config_cls = AudioCapsConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "dataset" / f"{_FILES[split]}.csv"
        groups: dict[tuple[str, float], list[dict]] = {}
        bad: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            start = parse_float(row.get("start_time"))
            missing = missing_fields(row, ("audiocap_id", "youtube_id", "caption"))
            if missing or start is None:
                bad.append(row_error(path, index, f"missing or bad {missing or 'start_time'}"))
                continue
            groups.setdefault((row["youtube_id"], start), []).append(row)
        return [self._item(src, split, rows) for rows in groups.values()] + bad

    def _item(self, src: Path, split: str, rows: list[dict]) -> ClipItem:
        first = rows[0]
        ytid, start = first["youtube_id"], float(first["start_time"])
        fields = {"split": _FILES[split], "youtube_id": ytid, "start_time": first["start_time"],
                  "audiocap_id": first["audiocap_id"]}
        audio = src / self.config.audio_pattern.format(**fields)
        segment = (start, start + 10.0) if self.config.cut_segment else (None, None)
        meta = {"audiocap_ids": [r["audiocap_id"] for r in rows], "youtube_id": ytid, "start_time": start}
        return ClipItem(f"{ytid}_{start:g}", str(audio), unique(r["caption"] for r in rows), (), *segment,
                        alt_ids=(f"youtube:{ytid}",), meta=meta, duration=10.0)
