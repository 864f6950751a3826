"""ljspeech: LJSpeech 1.1, one woman reading non-fiction books, with transcript-aware captions.

Source: Ito & Johnson 2017, data.keithito.com (`LJSpeech-1.1.tar.bz2`). Licence: public domain.

Layout (`--src` = the extracted `LJSpeech-1.1/`)::

    metadata.csv        no header, '|'-separated: id|transcription|normalized_transcription
    wavs/<id>.wav       22,050 Hz 16-bit mono, 1-10 s

Captions: 2 of `common.SPEECH_TEMPLATES` with speaker "a woman" and the normalized transcript
('a woman says "..."'), LAION's recommended form rather than the bare transcript LAION stored.
Both transcripts are kept (`transcript`, `normalized_transcript`). Split: none upstream; a
stable hash split holds out `test_fraction` as "test" (LAION's split was unseeded).
Ids: the LJ id (LJ001-0001). Speaker: "LJ".
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, HeldOutConfig, clean_text, read_text, speech_captions,
                                 split_by_hash)


@register_recipe
class LJSpeechRecipe(ClipRecipe):
    """LJSpeech 1.1 (13,100 read sentences, one speaker); public domain."""

    name = "ljspeech"
    version = "1"
    splits = ("train", "test")
    config_cls = HeldOutConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "metadata.csv"
        if not path.is_file():
            raise FileNotFoundError(f"metadata file {path} not found")
        items: list[ClipItem | BadRow] = []
        # Not the csv module: transcripts contain unbalanced quotes, and LJSpeech uses no quoting.
        for index, line in enumerate(read_text(path).splitlines(), 1):
            fields = line.split("|")
            if len(fields) != 3 or not fields[0].strip() or not clean_text(fields[2] or fields[1]):
                items.append(BadRow("malformed_row", f"metadata.csv row {index}: expected id|text|normalized text"))
                continue
            clip_id, raw, normalized = (f.strip() for f in fields)
            text = normalized or raw
            meta = {"transcript": raw, "normalized_transcript": normalized, "speaker": "LJ"}
            items.append(ClipItem(clip_id, str(src / "wavs" / f"{clip_id}.wav"),
                                  speech_captions(text, clip_id, "a woman"), meta=meta))
        return split_by_hash(items, split, self.config.test_fraction)
