"""Leakage filter: leave out clips that appear in evaluation sets (`build --exclude FILE`).

The list is an input (AudioCaps/Clotho test ids, ESC-50 Freesound ids, WavCaps blacklists,
...). Each entry is compared with every item's `Recipe.match_ids` (its stable id, then
cross-corpus ids such as "freesound:1234", "youtube:<ytid>", "bbc:<id>") and with its sample
key `<source>-<id>`. Matching happens on the item list, before shards are planned, so the
plan stays a pure function of (items, parameters, exclusion list); the writer stores the
number dropped as `excluded` in the manifest and the list's digest in the build parameters.
"""

from __future__ import annotations

from typing import Any

from clap_lightning.data import schema
from data_recipes.base import Recipe, RecipeError


def apply_exclude(recipe: Recipe, items: list[Any], exclude: frozenset[str]) -> tuple[list[Any], int]:
    """Drop the items whose match ids or sample key are in `exclude`; return (kept, number dropped).

    Raises:
        ValueError: the recipe gives no ids for any item, so nothing could be matched.
    """
    if not exclude:
        return items, 0
    kept, any_ids = [], False
    for item in items:
        ids = recipe.match_ids(item)
        any_ids = any_ids or bool(ids)
        keys = {schema.sample_key(recipe.name, ids[0])} if ids and ids[0] else set()
        if exclude.isdisjoint(ids) and exclude.isdisjoint(keys):
            kept.append(item)
    if not any_ids:
        raise RecipeError(f"corpus '{recipe.name}' gives no ids to match --exclude against (Recipe.match_ids)")
    return kept, len(items) - len(kept)
