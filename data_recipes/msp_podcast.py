"""msp_podcast: MSP-Podcast, podcast speech segments with emotion labels and transcripts.

Source: Lotfian & Busso 2019, UT Dallas MSP lab. Licence: gated academic licence.

Layout (`--src`, one release)::

    Audios/<FileName>                  MSP-PODCAST_<podcast>_<segment>.wav
    Labels/labels_consensus.csv        FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
    Transcripts/<FileName stem>.txt    optional, one transcript per segment

EmoClass codes (`EMOTIONS`): A angry, S sad, H happy, U surprised, F fearful, D disgusted,
C contemptuous, N neutral, O other, X no agreement (the code map is as loader repositories
give it; confirm against your release's documentation).
Captions: 2 of `common.EMOTION_TEMPLATES` with the transcript when there is one, else of
`common.EMOTION_ONLY_TEMPLATES`; O/X segments get transcript-only captions (or are skipped
as "no_caption" without a transcript). Labels: the emotion word; arousal/valence/dominance,
speaker id and gender kept.
Splits: Split_Set Train -> "train", Development -> "valid", Test1/Test2/Test3 -> "test1"/...
Ids: the file name stem.
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, clean_text, emotion_captions, missing_fields,
                                 parse_float, read_csv, read_text, row_error, speaker_phrase, speech_captions)

EMOTIONS = {"A": "angry", "S": "sad", "H": "happy", "U": "surprised", "F": "fearful", "D": "disgusted",
            "C": "contemptuous", "N": "neutral", "O": "", "X": ""}
_SPLITS = {"Train": "train", "Development": "valid", "Test1": "test1", "Test2": "test2", "Test3": "test3"}


@register_recipe
class MSPPodcastRecipe(ClipRecipe):
    """MSP-Podcast (100k-265k podcast segments, release-dependent); gated licence."""

    name = "msp_podcast"
    version = "1"
    splits = ("train", "valid", "test1", "test2", "test3")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "Labels" / "labels_consensus.csv"
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            missing = missing_fields(row, ("FileName", "EmoClass", "Split_Set"))
            if missing or row["EmoClass"] not in EMOTIONS or row["Split_Set"] not in _SPLITS:
                if split == "train":  # a row without a usable split is reported once
                    items.append(row_error(path, index, f"missing {missing} or unknown EmoClass/Split_Set"))
                continue
            if _SPLITS[row["Split_Set"]] == split:
                items.append(self._item(src, row))
        return items

    def _item(self, src: Path, row: dict) -> ClipItem | BadRow:
        stem = Path(row["FileName"]).stem
        transcript_path = src / "Transcripts" / f"{stem}.txt"
        transcript = clean_text(read_text(transcript_path)) if transcript_path.is_file() else ""
        speaker, emotion = speaker_phrase(row.get("Gender", "")), EMOTIONS[row["EmoClass"]]
        if emotion:
            captions = emotion_captions(emotion, stem, transcript, speaker)
        elif transcript:
            captions = speech_captions(transcript, stem, speaker)
        else:
            return BadRow("no_caption", f"{stem}: EmoClass {row['EmoClass']} and no transcript")
        meta = {"emotion_code": row["EmoClass"], "speaker": row.get("SpkrID", ""), "gender": row.get("Gender", ""),
                "transcript": transcript}
        for key, name in (("EmoAct", "arousal"), ("EmoVal", "valence"), ("EmoDom", "dominance")):
            if parse_float(row.get(key)) is not None:
                meta[name] = parse_float(row[key])
        return ClipItem(stem, str(src / "Audios" / row["FileName"]), captions, (emotion,) if emotion else (), meta=meta)
