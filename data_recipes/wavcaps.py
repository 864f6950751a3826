"""wavcaps: WavCaps, ChatGPT-rewritten captions of FreeSound, BBC Sound Effects, SoundBible and AudioSet_SL.

Source: Mei et al. 2023, HF dataset `cvssp/WavCaps` (json files + multi-part zips of FLAC).
Licence: academic use only; per-source terms apply (Freesound: CC licence of each clip; BBC
Sound Effects: RemArc licence, non-commercial; SoundBible: per clip; AudioSet: YouTube).

Layout (`--src`), as WavCaps' own download notes leave it after unzipping::

    json_files/FreeSound/fsd_final.json          {"num_captions_per_audio": 1, "data": [...]}
    json_files/BBC_Sound_Effects/bbc_final.json  items: id, caption, audio, duration (+ source fields,
    json_files/SoundBible/sb_final.json            e.g. SoundBible's title, description, author, href)
    json_files/AudioSet_SL/as_final.json
    audio/<Source>/<id>.flac                     AudioSet_SL ids are PANNs names `Y<ytid>.wav` -> `Y<ytid>.flac`

Every *.json in a source's folder is read (the `audio` fields are placeholders and ignored).
Option `audio_dir` moves the audio root; `sources` picks sub-sources.

Captions: the native `caption` (one per clip). The raw web `description`/`title`, when an
item has them, are kept in the json, not in `text`. Split: everything is "train" (WavCaps is
a pretraining set; use its blacklists with `--exclude` to drop evaluation overlap).
Ids: `<source>-<name>`, e.g. `freesound-180913`; cross-corpus ids `freesound:<id>` and
`youtube:<ytid>` for --exclude.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from data_recipes.base import RecipeError, register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, clean_text, parse_float, read_json

SOURCES = {
    "FreeSound": "freesound",
    "BBC_Sound_Effects": "bbc",
    "SoundBible": "soundbible",
    "AudioSet_SL": "audioset_sl",
}
_KEEP = ("title", "description", "author", "tags", "href", "license")  # raw source fields copied to the json


@dataclasses.dataclass
class WavCapsConfig:
    """Which WavCaps sub-sources to read and where their audio is."""

    sources: str = "FreeSound,BBC_Sound_Effects,SoundBible,AudioSet_SL"  # comma-separated sub-sources
    audio_dir: str = "audio"  # audio root under --src, one folder per sub-source


def _stem(name: str) -> str:
    for suffix in (".wav", ".flac", ".mp3"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@register_recipe
class WavCapsRecipe(ClipRecipe):
    """WavCaps (4 sub-sources, ~400k clips, native ChatGPT captions); academic use only."""

    name = "wavcaps"
    version = "1"
    splits = ("train",)
    config_cls = WavCapsConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        names = [s.strip() for s in self.config.sources.split(",") if s.strip()]
        unknown = [s for s in names if s not in SOURCES]
        if unknown:
            raise RecipeError(f"unknown WavCaps source '{unknown[0]}'; known: {', '.join(SOURCES)}")
        items: list[ClipItem | BadRow] = []
        for source in names:
            files = sorted((src / "json_files" / source).glob("*.json"))
            if not files:
                raise FileNotFoundError(f"no WavCaps json in {src / 'json_files' / source}")
            for path in files:
                data = read_json(path)
                entries = data.get("data") if isinstance(data, dict) else None
                if not isinstance(entries, list):
                    raise RecipeError(f"{path}: expected {{'data': [...]}} as WavCaps json files have")
                items += [self._item(src, source, path, i, e) for i, e in enumerate(entries, 1)]
        return items

    def _item(self, src: Path, source: str, path: Path, index: int, entry: Any) -> ClipItem | BadRow:
        if not isinstance(entry, dict) or not entry.get("id"):
            return BadRow("malformed_row", f"{path.name} item {index}: no id")
        caption = clean_text(entry.get("caption"))
        if not caption:
            return BadRow("no_caption", f"{path.name} item {index} ({entry['id']}): empty caption")
        stem = _stem(str(entry["id"]))
        short = SOURCES[source]
        alt = ()
        if short == "freesound":
            alt = (f"freesound:{stem}",)
        elif short == "audioset_sl":
            alt = (f"youtube:{stem[1:] if stem.startswith('Y') else stem}",)
        meta = {k: entry[k] for k in _KEEP if entry.get(k) not in (None, "", [])}
        meta["wavcaps_source"] = source
        audio = src / self.config.audio_dir / source / f"{stem}.flac"
        return ClipItem(f"{short}-{stem}", str(audio), (caption,), alt_ids=alt, meta=meta,
                        duration=parse_float(entry.get("duration")))
