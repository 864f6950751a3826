"""fsd50k: FSD50K clips with their Freesound web descriptions as captions (as CLAP-2023 did).

Source: Fonseca et al. 2022, Zenodo 4060432 (multi-part zips; merge with `zip -s 0`).
Licence: dataset CC BY 4.0; each clip CC0 / CC-BY / CC-BY-NC / Sampling+ (json "license").

Layout (`--src`, the unzipped Zenodo archives)::

    FSD50K.dev_audio/<fname>.wav                 44.1 kHz mono, 0.3-30 s; fname = Freesound id
    FSD50K.eval_audio/<fname>.wav
    FSD50K.ground_truth/dev.csv                  fname,labels,mids,split   (split: train / val)
    FSD50K.ground_truth/eval.csv                 fname,labels,mids
    FSD50K.metadata/dev_clips_info_FSD50K.json   {fname: {title, description, tags, license, uploader}}
    FSD50K.metadata/eval_clips_info_FSD50K.json

Splits: "train" = dev rows with split=train, "valid" = dev split=val, "test" = eval. Keep
"test" out of pretraining when FSD50K is a downstream task.
Captions: the clip's Freesound `description` (HTML stripped), or its `title` when the
description is empty. The paper used these web texts, *not* the labels, which are kept raw
(`labels`, e.g. "Bark", "Dog") with `mids`, `tags`, `title`, `uploader`, `license`.
Ids: the Freesound id; cross-corpus id `freesound:<id>`.
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, missing_fields, read_csv, read_json, row_error, unique

_SPLITS = {"train": ("dev", "train"), "valid": ("dev", "val"), "test": ("eval", None)}


@register_recipe
class FSD50KRecipe(ClipRecipe):
    """FSD50K (51k Freesound clips, 200 classes) with web descriptions as captions; CC BY 4.0."""

    name = "fsd50k"
    version = "1"
    splits = ("train", "valid", "test")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        part, official = _SPLITS[split]
        csv_path = src / "FSD50K.ground_truth" / f"{part}.csv"
        info = read_json(src / "FSD50K.metadata" / f"{part}_clips_info_FSD50K.json")
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_csv(csv_path), 1):
            if official is not None and row.get("split") != official:
                continue
            missing = missing_fields(row, ("fname", "labels"))
            if missing:
                items.append(row_error(csv_path, index, f"missing {missing}"))
                continue
            fname = row["fname"]
            clip = info.get(fname) or {}
            captions = unique([clip.get("description", "")]) or unique([clip.get("title", "")])
            if not captions:
                items.append(BadRow("no_caption", f"{fname}: no description or title in {part}_clips_info_FSD50K.json"))
                continue
            meta = {k: clip[k] for k in ("title", "tags", "license", "uploader") if clip.get(k)}
            meta["mids"] = [m for m in row.get("mids", "").split(",") if m]
            labels = tuple(label for label in row["labels"].split(",") if label)
            audio = src / f"FSD50K.{part}_audio" / f"{fname}.wav"
            items.append(ClipItem(fname, str(audio), captions, labels, alt_ids=(f"freesound:{fname}",), meta=meta))
        return items

