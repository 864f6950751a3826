"""cochlscene: CochlScene, 10 s acoustic scenes recorded by 831 crowd workers, template captions.

Source: Jeong & Park 2022, Zenodo 7080122 / github.com/cochlearai/cochlscene. Licence: see
the Zenodo record (not checked here).

Layout (`--src` = the extracted `CochlScene/`)::

    Train/<Scene>/<file>.wav      10 s mono WAV, 44.1 kHz
    Val/<Scene>/<file>.wav        Scene: Bus, Cafe, Car, CrowdedIndoor, Elevator, Kitchen, Park,
    Test/<Scene>/<file>.wav       ResidentialArea, Restaurant, Restroom, Street, Subway, SubwayStation

Captions: 2 of `TEMPLATES` with the scene as a place (`PLACES`: "a crowded indoor space").
Labels: the scene folder name. Splits: Train -> "train", Val -> "valid", Test -> "test".
Ids: `<Scene>/<file stem>`. A file in an unknown scene folder is counted as "unknown_label".
"""

from __future__ import annotations

from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, audio_files, pick_captions

TEMPLATES = (
    "ambient sound recorded in {place}",
    "the acoustic scene of {place}",
    "background noise in {place}",
    "a recording made in {place}",
    "what it sounds like inside {place}",
)
PLACES = {"Bus": "a bus", "Cafe": "a cafe", "Car": "a car", "CrowdedIndoor": "a crowded indoor space",
          "Elevator": "an elevator", "Kitchen": "a kitchen", "Park": "a park", "ResidentialArea": "a residential area",
          "Restaurant": "a restaurant", "Restroom": "a restroom", "Street": "a street", "Subway": "a subway train",
          "SubwayStation": "a subway station"}
_FOLDERS = {"train": "Train", "valid": "Val", "test": "Test"}


@register_recipe
class CochlSceneRecipe(ClipRecipe):
    """CochlScene (~76k 10 s scenes, 13 classes); template captions."""

    name = "cochlscene"
    version = "1"
    splits = ("train", "valid", "test")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        root = src / _FOLDERS[split]
        if not root.is_dir():
            raise FileNotFoundError(f"CochlScene split folder {root} not found")
        items: list[ClipItem | BadRow] = []
        for path in audio_files(root, ("wav",)):
            scene = path.relative_to(root).parts[0]
            if scene not in PLACES or len(path.relative_to(root).parts) != 2:
                items.append(BadRow("unknown_label", f"{path.relative_to(src)}: not in a known scene folder"))
                continue
            key = f"{scene}/{path.stem}"
            captions = pick_captions(TEMPLATES, key, 2, place=PLACES[scene])
            items.append(ClipItem(key, str(path), captions, (scene,), duration=10.0))
        return items
