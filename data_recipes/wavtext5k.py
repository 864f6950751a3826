"""wavtext5k: WavText5K, sound effects crawled from BigSoundBank and SoundBible with their web texts.

Source: Deshmukh et al. 2022, github.com/microsoft/WavText5K (`WavText5K.csv` of links;
its `process.py` downloads and resamples). Licence: code MIT; audio under each source
site's terms (BigSoundBank, SoundBible; unconfirmed here).

Layout (`--src`)::

    WavText5K.csv                        view_link,download_link,title,description,fname,tags
    Webcrawl/44100/audios/<fname>        as process.py writes it (option `audio_dir`); a fname
                                         without extension is looked up as <fname>.wav

Captions: the human `description`, then the `title` when it differs (4,348 rows have a
description, 4,520 a title). `tags` (SoundBible rows) are kept. Split: none upstream; a
stable hash split holds out `test_fraction` as "test". Ids: the fname stem.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, HeldOutConfig, first_existing, read_csv, row_error,
                                 split_by_hash, unique)


@dataclasses.dataclass
class WavText5KConfig(HeldOutConfig):
    """Where process.py put the audio, and the held-out share."""

    audio_dir: str = "Webcrawl/44100/audios"  # under --src


@register_recipe
class WavText5KRecipe(ClipRecipe):
    """WavText5K (4,525 web sound effects with descriptions/titles)."""

    name = "wavtext5k"
    version = "1"
    splits = ("train", "test")
    config_cls = WavText5KConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "WavText5K.csv"
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(path), 1):
            fname = row.get("fname") or ""
            captions = unique([row.get("description") or "", row.get("title") or ""])
            if not fname or not captions:
                items.append(row_error(path, index, "no fname or neither description nor title"))
                continue
            stem = Path(fname).stem
            folder = src / self.config.audio_dir
            audio = first_existing([folder / fname, folder / f"{fname}.wav"]) or folder / fname
            meta = {k: row[k] for k in ("title", "view_link") if row.get(k)}
            tags = tuple(t.strip() for t in (row.get("tags") or "").split(",") if t.strip())
            if tags:
                meta["tags"] = list(tags)
            items.append(ClipItem(stem, str(audio), captions, meta=meta))
        return split_by_hash(items, split, self.config.test_fraction)
