"""epic_sounds: EPIC-Sounds, kitchen sound events cut from EPIC-KITCHENS-100 recordings by timestamp.

Source: Huh et al. 2023, github.com/epic-kitchens/epic-sounds-annotations (annotations);
the recordings are EPIC-KITCHENS-100 videos (download scripts) whose audio you extract,
or the HDF5/WAV audio of auditory-slow-fast. Licence: annotations CC BY-NC 4.0;
EPIC-KITCHENS videos CC BY-NC 4.0.

Layout (`--src`)::

    EPIC_Sounds_train.csv  EPIC_Sounds_validation.csv
        annotation_id,participant_id,video_id,start_timestamp,stop_timestamp,start_sample,
        stop_sample,description,class,class_id        (timestamps HH:MM:SS.ff)
    audio/<video_id>.wav                         one audio file per video, any rate, or
    <participant_id>/videos/<video_id>.MP4       the EPIC-KITCHENS video (decoded with ffmpeg)

The first existing file of `audio_patterns` is used. Segments are cut by the timestamps
(the start/stop_sample columns assume 24 kHz; the timestamps hold at any rate).
Captions: the native `description` ("paper rustle") and 1 of `TEMPLATES` with the class
("the sound of cut / chop in a kitchen"). Labels: the class (44). The unlabelled
recognition test set and the non-categorised events are not read.
Splits: train, validation -> "valid". Ids: the annotation_id.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, clean_text, first_existing, missing_fields,
                                 parse_timestamp, pick_captions, read_csv, row_error, unique)

TEMPLATES = (
    "the sound of {label} in a kitchen",
    "{label} heard while someone cooks",
    "a kitchen recording of {label}",
    "{label} sounds in a home kitchen",
)
_FILES = {"train": "EPIC_Sounds_train.csv", "valid": "EPIC_Sounds_validation.csv"}


@dataclasses.dataclass
class EpicSoundsConfig:
    """Where each video's audio is."""

    audio_patterns: str = "audio/{video_id}.wav,{participant_id}/videos/{video_id}.MP4"  # tried in order


@register_recipe
class EpicSoundsRecipe(ClipRecipe):
    """EPIC-Sounds (78k kitchen sound events, 44 classes); CC BY-NC 4.0."""

    name = "epic_sounds"
    version = "1"
    splits = ("train", "valid")
    config_cls = EpicSoundsConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / _FILES[split]
        patterns = [p.strip() for p in self.config.audio_patterns.split(",") if p.strip()]
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            missing = missing_fields(row, ("annotation_id", "participant_id", "video_id", "class"))
            start, stop = (
                parse_timestamp(row.get("start_timestamp", "")),
                parse_timestamp(row.get("stop_timestamp", "")),
            )
            if missing or start is None or stop is None or stop <= start:
                items.append(row_error(path, index, f"missing {missing} or bad timestamps"))
                continue
            candidates = [src / p.format(**row) for p in patterns]
            audio = first_existing(candidates) or candidates[0]
            label = clean_text(row["class"])
            captions = unique(
                [row.get("description", ""), *pick_captions(TEMPLATES, row["annotation_id"], 1, label=label)]
            )
            meta = {"video_id": row["video_id"], "participant_id": row["participant_id"],
                    "class_id": row.get("class_id", ""), "description": row.get("description", "")}
            items.append(ClipItem(row["annotation_id"], str(audio), captions, (label,), start, stop, meta=meta))
        return items
