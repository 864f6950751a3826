"""cmu_mosi: CMU-MOSI, opinion video segments with transcripts and sentiment scores.

Source: Zadeh et al. 2016, CMU MultiComp (raw archive / CMU-MultimodalSDK). Licence:
research use via CMU; the videos are from YouTube.

Layout (`--src`): the segmented audio of the raw archive plus the flat label table that
MMSA (thuiar/MMSA) distributes for MOSI, the commonest form of the SDK labels::

    label.csv                                    video_id,clip_id,text,label,label_T,label_A,label_V,
                                                 annotation,mode   (label: sentiment in [-3, 3];
                                                 annotation: Negative/Neutral/Positive;
                                                 mode: train/valid/test, the SDK's standard folds)
    Audio/WAV_16000/Segmented/<video_id>_<clip_id>.wav   (option `audio_pattern`)

Captions: 2 of `common.EMOTION_TEMPLATES` with the transcript and the sentiment as a word
(`common.sentiment_word`: very negative ... very positive), e.g. 'a person says "..." in
a positive voice'. Labels: the annotation (negative/neutral/positive); `sentiment` score
kept. Splits: mode. Ids: `<video_id>_<clip_id>`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, emotion_captions, missing_fields, parse_float, read_csv,
                                 row_error, sentiment_word)


@dataclasses.dataclass
class MosiConfig:
    """Where the segmented audio is."""

    audio_pattern: str = "Audio/WAV_16000/Segmented/{video_id}_{clip_id}.wav"  # under --src


@register_recipe
class MosiRecipe(ClipRecipe):
    """CMU-MOSI (2,199 opinion segments, sentiment [-3, 3]); research use."""

    name = "cmu_mosi"
    version = "1"
    splits = ("train", "valid", "test")
    config_cls = MosiConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "label.csv"
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            score = parse_float(row.get("label"))
            missing = missing_fields(row, ("video_id", "clip_id", "text", "mode"))
            if missing or score is None:
                if split == "train":
                    items.append(row_error(path, index, f"missing {missing or 'label'}"))
                continue
            if row["mode"] != split:
                continue
            key = f"{row['video_id']}_{row['clip_id']}"
            captions = emotion_captions(sentiment_word(score), key, row["text"])
            annotation = (row.get("annotation") or "").lower()
            meta = {"transcript": row["text"], "sentiment": score}
            audio = src / self.config.audio_pattern.format(video_id=row["video_id"], clip_id=row["clip_id"])
            items.append(ClipItem(key, str(audio), captions, (annotation,) if annotation else (), meta=meta))
        return items
