"""clotho: Clotho v2.1, Freesound clips with 5 crowd-sourced captions each.

Source: Drossos et al. 2020, Zenodo 4783391 (`clotho_audio_{development,validation,evaluation}.7z`
plus caption and metadata csvs). Licence: audio under each clip's Freesound CC licence
(json "license"); captions under Tampere University's non-commercial, attribution licence.

Layout (`--src`, the archives extracted side by side)::

    development/<file_name>              WAV 44.1 kHz mono, 15-30 s; file names are Freesound
    validation/<file_name>               titles with spaces and punctuation
    evaluation/<file_name>
    clotho_captions_<split>.csv          file_name,caption_1,...,caption_5
    clotho_metadata_<split>.csv          file_name,keywords,sound_id,sound_link,start_end_samples,
                                         manufacturer,license   (Latin-1 encoded in v2.1)

Splits: development -> "train", validation -> "valid", evaluation -> "test". LAION's
preprocess_clotho.py swaps the last two; evaluation is Clotho's standard test set, so keep
"test" out of pretraining (CLAP-2023 removed it).
Captions: all 5 native captions. `keywords` (split on ';') become `tags`.
Ids: the file name without extension (keys turn spaces and dots into '_'); cross-corpus id
`freesound:<sound_id>` where the metadata has one.
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, read_csv, row_error, unique

SPLIT_FOLDERS = {"train": "development", "valid": "validation", "test": "evaluation"}
CAPTION_COLUMNS = tuple(f"caption_{i}" for i in range(1, 6))


@register_recipe
class ClothoRecipe(ClipRecipe):
    """Clotho v2.1 (5,929 clips x 5 captions); evaluation is the test split."""

    name = "clotho"
    version = "1"
    splits = ("train", "valid", "test")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        folder = SPLIT_FOLDERS[split]
        captions_path = src / f"clotho_captions_{folder}.csv"
        metadata_path = src / f"clotho_metadata_{folder}.csv"
        metadata = {row.get("file_name"): row for row in read_csv(metadata_path)} if metadata_path.is_file() else {}
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(captions_path), 1):
            file_name = row.get("file_name") or ""
            captions = unique(row.get(c) or "" for c in CAPTION_COLUMNS)
            if not file_name or not captions:
                items.append(row_error(captions_path, index, "no file_name or no caption"))
                continue
            meta_row = metadata.get(file_name, {})
            sound_id = meta_row.get("sound_id") or ""
            meta = {"file_name": file_name, "clotho_split": folder}
            if sound_id.isdigit():
                meta["sound_id"] = sound_id
            for key in ("sound_link", "manufacturer", "license"):
                if meta_row.get(key):
                    meta[key] = meta_row[key]
            if meta_row.get("keywords"):
                meta["tags"] = [k.strip() for k in meta_row["keywords"].split(";") if k.strip()]
            alt = (f"freesound:{sound_id}",) if sound_id.isdigit() else ()
            items.append(
                ClipItem(Path(file_name).stem, str(src / folder / file_name), captions, alt_ids=alt, meta=meta)
            )
        return items
