"""macs: MACS, multi-annotator captions of TAU Urban Acoustic Scenes 2019 clips.

Source: Martin Morato & Mesaros 2021, Zenodo 5114771 (`MACS.yaml`); the audio is not in
it: take the TAU Urban Acoustic Scenes 2019 development set (Zenodo 2589280), 10 s
binaural WAV (the writer down-mixes to mono). Licence: MACS "other (non-commercial)"
per LAION's notes, TAU 2019 non-commercial (both unconfirmed here).

Layout (`--src`)::

    MACS.yaml                                            files: [{filename, annotations:
                                                            [{annotator_id, sentence, tags}]}]
    TAU-urban-acoustic-scenes-2019-development/audio/<filename>   (option `audio_dir`)

Captions: every annotator's sentence (about 4-5 per clip). `labels`: the union of the
annotators' tags, '_' -> ' ' (as LAION did); `scene` from the file name prefix
(airport, public_square, park). Split: none upstream; a stable hash split holds out
`test_fraction` (default 10 %, LAION's share) as "test". Ids: the file name stem.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from data_recipes.base import RecipeError, register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, HeldOutConfig, read_text, split_by_hash, unique


@dataclasses.dataclass
class MACSConfig(HeldOutConfig):
    """Where the TAU 2019 audio is, and the held-out share."""

    audio_dir: str = "TAU-urban-acoustic-scenes-2019-development/audio"  # under --src


@register_recipe
class MACSRecipe(ClipRecipe):
    """MACS (3,930 TAU 2019 scenes, ~5 captions each); non-commercial."""

    name = "macs"
    version = "1"
    splits = ("train", "test")
    config_cls = MACSConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "MACS.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"metadata file {path} not found")
        try:
            files = (yaml.safe_load(read_text(path)) or {}).get("files")
        except yaml.YAMLError as err:
            raise RecipeError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(files, list):
            raise RecipeError(f"{path}: expected a top-level 'files' list")
        items = [self._item(src, i, entry) for i, entry in enumerate(files, 1)]
        return split_by_hash(items, split, self.config.test_fraction)

    def _item(self, src: Path, index: int, entry: Any) -> ClipItem | BadRow:
        if not isinstance(entry, dict) or not entry.get("filename"):
            return BadRow("malformed_row", f"MACS.yaml file {index}: no filename")
        annotations = [a for a in entry.get("annotations") or [] if isinstance(a, dict)]
        captions = unique(str(a.get("sentence") or "") for a in annotations)
        if not captions:
            return BadRow("no_caption", f"MACS.yaml {entry['filename']}: no annotator sentence")
        tags = unique(str(t).replace("_", " ") for a in annotations for t in a.get("tags") or [])
        filename = str(entry["filename"])
        meta = {"scene": filename.split("-")[0], "annotator_ids": [a.get("annotator_id") for a in annotations]}
        return ClipItem(Path(filename).stem, str(src / self.config.audio_dir / filename), captions, tags,
                        meta=meta, duration=10.0)
