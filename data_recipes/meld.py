"""meld: MELD, utterances from the TV series Friends, with transcript, emotion and sentiment captions.

Source: Poria et al. 2019, github.com/declare-lab/MELD (`MELD.Raw.tar.gz` from
web.eecs.umich.edu/~mihalcea/downloads). Licence: annotations GPL-3.0; the clips come from
a copyrighted TV series, research use only.

Layout (`--src` = the extracted `MELD.Raw/`, its split archives extracted in place)::

    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
        Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime
    train_splits/dia<D>_utt<U>.mp4
    dev_splits_complete/dia<D>_utt<U>.mp4
    output_repeated_splits_test/dia<D>_utt<U>.mp4

The audio is extracted from the MP4s with ffmpeg (required; the build stops with one line
when it is missing). Emotions: neutral, joy, sadness, anger, surprise, fear, disgust;
sentiments: neutral, positive, negative. The csvs hold Windows-1252 characters in places.
Captions: 2 of `common.EMOTION_TEMPLATES`, speaker = the character's name ('Joey says "..."
in a joyful voice'). Labels: emotion and sentiment. Splits: train, dev -> "valid", test.
Ids: `<split>-dia<D>_utt<U>` (dialogue ids restart in every split).
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, emotion_captions, missing_fields, read_csv,
                                 require_ffmpeg, row_error)

EMOTION_WORDS = {"neutral": "neutral", "joy": "joyful", "sadness": "sad", "anger": "angry", "surprise": "surprised",
                 "fear": "fearful", "disgust": "disgusted"}
_FILES = {"train": ("train", "train_splits"), "valid": ("dev", "dev_splits_complete"),
          "test": ("test", "output_repeated_splits_test")}


@register_recipe
class MELDRecipe(ClipRecipe):
    """MELD (13,708 Friends utterances, 7 emotions); audio extracted from MP4 with ffmpeg."""

    name = "meld"
    version = "1"
    splits = ("train", "valid", "test")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        require_ffmpeg(self.name)
        prefix, folder = _FILES[split]
        path = src / f"{prefix}_sent_emo.csv"
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            missing = missing_fields(row, ("Utterance", "Emotion", "Dialogue_ID", "Utterance_ID"))
            emotion = (row.get("Emotion") or "").lower()
            if missing or emotion not in EMOTION_WORDS:
                items.append(row_error(path, index, f"missing {missing} or unknown emotion {emotion!r}"))
                continue
            name = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
            key = f"{prefix}-{name}"
            speaker = row.get("Speaker") or "a person"
            captions = emotion_captions(EMOTION_WORDS[emotion], key, row["Utterance"], speaker)
            sentiment = (row.get("Sentiment") or "").lower()
            meta = {"transcript": row["Utterance"], "speaker": speaker, "sentiment": sentiment,
                    "season": row.get("Season", ""), "episode": row.get("Episode", "")}
            labels = (emotion, sentiment) if sentiment else (emotion,)
            items.append(ClipItem(key, str(src / folder / f"{name}.mp4"), captions, labels, meta=meta))
        return items
