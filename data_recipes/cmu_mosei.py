"""cmu_mosei: CMU-MOSEI, opinion videos cut into labelled segments, with sentiment and emotion captions.

Source: Zadeh et al. 2018, CMU MultiComp (`CMU_MOSEI.zip` raw archive). Licence: research
use via CMU; the videos are from YouTube.

Layout (`--src`): the raw archive's full-video audio, cut by the segment table s3prl
derives from the SDK labels (`downstream/mosei/utility/CMU_MOSEI_Labels.csv`), plus the
raw segmented transcripts when present::

    CMU_MOSEI_Labels.csv                     ,file,index,start,end,label2a,label2b,label6,label7,split
                                             (label7: sentiment -3..3; label6: dominant emotion,
                                             0-based over `EMOTIONS`; split: 0 train, 1 valid, 2 test)
    Raw/Audio/Full/WAV_16000/<file>.wav      whole videos, 16 kHz
    Raw/Transcript/Segmented/Combined/<file>.txt   "<file>___<index>___<start>___<end>___<text>" lines

Segments are cut from the full audio by [start, end] seconds (negative starts clamp to 0).
Captions: with a transcript, 2 of `common.EMOTION_TEMPLATES` using the emotion word; without,
`common.EMOTION_ONLY_TEMPLATES`. Labels: emotion and sentiment word; the scores are kept.
Rows whose split is none of 0/1/2 are counted as "outside_folds" (reported with "train").
Ids: `<file>_<index>`.
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, emotion_captions, missing_fields, parse_float, read_csv,
                                 read_text, row_error, sentiment_word)

# happiness, sadness, anger, surprise, disgust, fear
EMOTIONS = ("happy", "sad", "angry", "surprised", "disgusted", "fearful")
_SPLITS = {"0": "train", "1": "valid", "2": "test"}


def read_transcripts(folder: Path, video: str) -> dict[str, str]:
    """{segment index: text} of one video's segmented transcript, {} when absent."""
    path = folder / f"{video}.txt"
    if not path.is_file():
        return {}
    out = {}
    for line in read_text(path).splitlines():
        parts = line.split("___", 4)
        if len(parts) == 5:
            out[parts[1]] = parts[4].strip()
    return out


@register_recipe
class MoseiRecipe(ClipRecipe):
    """CMU-MOSEI (~23k opinion segments; sentiment + 6 emotions); research use."""

    name = "cmu_mosei"
    version = "1"
    splits = ("train", "valid", "test")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "CMU_MOSEI_Labels.csv"
        transcripts_dir = src / "Raw" / "Transcript" / "Segmented" / "Combined"
        cache: dict[str, dict[str, str]] = {}
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            start, end, score = (parse_float(row.get(k)) for k in ("start", "end", "label7"))
            emotion = row.get("label6", "")
            if missing_fields(row, ("file", "index")) or None in (start, end, score) or not emotion.isdigit() \
                    or int(emotion) >= len(EMOTIONS):
                if split == "train":
                    items.append(row_error(path, index, "missing file/index or bad start/end/label6/label7"))
                continue
            if row.get("split") not in _SPLITS:
                if split == "train":
                    items.append(BadRow("outside_folds", f"{path.name} row {index}: split {row.get('split')!r}"))
                continue
            if _SPLITS[row["split"]] != split:
                continue
            video = row["file"]
            if video not in cache:
                cache[video] = read_transcripts(transcripts_dir, video)
            transcript = cache[video].get(row["index"], "")
            key = f"{video}_{row['index']}"
            word = EMOTIONS[int(emotion)]
            meta = {"transcript": transcript, "sentiment": score}
            audio = src / "Raw" / "Audio" / "Full" / "WAV_16000" / f"{video}.wav"
            items.append(ClipItem(key, str(audio), emotion_captions(word, key, transcript),
                                  (word, sentiment_word(score)), max(0.0, start), end, meta=meta))
        return items
