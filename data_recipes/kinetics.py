"""kinetics700: Kinetics-700-2020 action clips; audio extracted from the videos, template captions.

Source: Smaira et al. 2020 (DeepMind); CVDF mirror github.com/cvdfoundation/kinetics-dataset
(`k700_2020_downloader.sh`). Licence: annotations CC BY 4.0 (unconfirmed); the videos belong
to their YouTube uploaders.

Layout (`--src` = `k700-2020/`)::

    annotations/train.csv  val.csv  test.csv     label,youtube_id,time_start,time_end,split
    train/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4    after arrange_by_classes.py, or
    train/<youtube_id>_<start:06d>_<end:06d>.mp4            as the tar.gz files extract
    val/...  test/...

The audio track is decoded with ffmpeg, which must be installed: the build stops with one
line otherwise. Clips without an audio track are counted as "no_audio_track" / "unreadable_audio".
Captions: 2 of `TEMPLATES` with the action label ("audio of someone playing guitar").
Labels: the action. A row without a label (the test csv may have none) is counted as
"no_label". Splits: train, val -> "valid", test. Ids: the file stem; cross-corpus id
`youtube:<youtube_id>`.
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, first_existing, missing_fields, parse_float,
                                 pick_captions, read_csv, require_ffmpeg, row_error)

TEMPLATES = (
    "the sound of {action}",
    "audio of someone {action}",
    "{action} can be heard",
    "the soundtrack of a video of {action}",
    "a recording of people {action}",
)
_FOLDERS = {"train": "train", "valid": "val", "test": "test"}


@register_recipe
class KineticsRecipe(ClipRecipe):
    """Kinetics-700-2020 (~650k 10 s YouTube clips, 700 actions); audio via ffmpeg."""

    name = "kinetics700"
    version = "1"
    splits = ("train", "valid", "test")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        require_ffmpeg(self.name)
        folder = _FOLDERS[split]
        path = src / "annotations" / f"{folder}.csv"
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            start, end = parse_float(row.get("time_start")), parse_float(row.get("time_end"))
            if missing_fields(row, ("youtube_id",)) or start is None or end is None:
                items.append(row_error(path, index, "missing youtube_id or bad time_start/time_end"))
                continue
            stem = f"{row['youtube_id']}_{int(start):06d}_{int(end):06d}"
            action = row.get("label", "")
            if not action:
                items.append(BadRow("no_label", f"{path.name} row {index}: {stem} has no label"))
                continue
            candidates = [src / folder / action / f"{stem}.mp4", src / folder / f"{stem}.mp4"]
            video = first_existing(candidates) or candidates[0]
            captions = pick_captions(TEMPLATES, stem, 2, action=action)
            items.append(ClipItem(stem, str(video), captions, (action,), alt_ids=(f"youtube:{row['youtube_id']}",),
                                  meta={"youtube_id": row["youtube_id"], "time_start": start}, duration=end - start))
        return items
