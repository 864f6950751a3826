"""sounddescs: SoundDescs, BBC Sound Effects with their catalogue descriptions.

Source: Koepke et al. 2022, github.com/akoepke/audio-retrieval-benchmark (pickles, split
lists, `download_links.txt` of per-id zips from sound-effects-media.bbcrewind.co.uk).
Licence: BBC RemArc licence, non-commercial only.

Layout (`--src`)::

    sounddescs_data/descriptions.pkl     {id: description}     (caption)
    sounddescs_data/categories.pkl       {id: ['Nature', ...]} (labels)
    sounddescs_data/extra_info.pkl       {id: "File info: ..."}  (optional)
    data/SoundDescs/{train,val,test}_list.txt   one id per line
    audio/<id>.wav                       the unzipped downloads (option `audio_dir`)

Pickles are trusted input: only load the files the benchmark repository ships.
Splits: train, val -> "valid", test (23,085 / 4,947 / 4,947). Captions: the BBC
description. Labels: the categories. Ids: the BBC id; cross-corpus id `bbc:<id>`
(WavCaps' BBC_Sound_Effects source holds the same recordings).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

from data_recipes.base import RecipeError, register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, unique

_LISTS = {"train": "train", "valid": "val", "test": "test"}


@dataclasses.dataclass
class SoundDescsConfig:
    """Where the unzipped audio is."""

    audio_dir: str = "audio"  # under --src; files <id>.wav


def read_pickle_dict(path: Path) -> dict[str, Any]:
    """Load a {id: value} pickle (a dict or anything with .items(), e.g. a pandas Series)."""
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} not found")
    with open(path, "rb") as f:
        obj = pickle.load(f)  # noqa: S301 - the benchmark's own metadata files
    if not hasattr(obj, "items"):
        raise RecipeError(f"{path}: expected a mapping of id to value, found {type(obj).__name__}")
    return {str(k): v for k, v in obj.items()}


@register_recipe
class SoundDescsRecipe(ClipRecipe):
    """SoundDescs (32,979 BBC sound effects with descriptions); non-commercial."""

    name = "sounddescs"
    version = "1"
    splits = ("train", "valid", "test")
    config_cls = SoundDescsConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        data = src / "sounddescs_data"
        descriptions = read_pickle_dict(data / "descriptions.pkl")
        categories = read_pickle_dict(data / "categories.pkl")
        extra = read_pickle_dict(data / "extra_info.pkl") if (data / "extra_info.pkl").is_file() else {}
        list_path = src / "data" / "SoundDescs" / f"{_LISTS[split]}_list.txt"
        if not list_path.is_file():
            raise FileNotFoundError(f"split list {list_path} not found")
        items: list[ClipItem | BadRow] = []
        for line in list_path.read_text(encoding="utf-8").splitlines():
            clip_id = line.strip()
            if not clip_id:
                continue
            captions = unique([str(descriptions.get(clip_id) or "")])
            if not captions:
                items.append(BadRow("no_caption", f"{clip_id}: not in descriptions.pkl"))
                continue
            labels = tuple(str(c) for c in categories.get(clip_id) or [])
            meta = {"file_info": str(extra[clip_id])} if clip_id in extra else {}
            audio = src / self.config.audio_dir / f"{clip_id}.wav"
            items.append(ClipItem(clip_id, str(audio), captions, labels, alt_ids=(f"bbc:{clip_id}",), meta=meta))
        return items
