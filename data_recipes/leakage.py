"""Leakage filter: leave out clips that appear in evaluation sets (`build --exclude FILE`).

The list is an input (AudioCaps/Clotho test ids, ESC-50 Freesound ids, WavCaps blacklists,
...). Each entry is compared with every item's `Recipe.match_ids` (its stable id, then
cross-corpus ids such as "freesound:1234", "youtube:<ytid>", "bbc:<id>") and with its sample
key `<source>-<id>`. Matching happens on the item list, before shards are planned, so the
plan stays a pure function of (items, parameters, exclusion list); the writer stores the
number dropped as `excluded` in the manifest and the list's digest in the build parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clap_lightning.data import schema
from data_recipes.base import Recipe


def read_exclude_file(path: str | Path) -> frozenset[str]:
    """Read a leakage exclusion list: a json list, or one id per line ('#' starts a comment).

    Entries are compared with each item's `Recipe.match_ids` (its stable id and cross-corpus
    ids such as "freesound:1234" or "youtube:<ytid>") and with its sample key `<source>-<id>`.

    Raises:
        FileNotFoundError / ValueError: one line naming the file and what was wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--exclude file {path} not found")
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--exclude file {path} is not a valid json list: {err}") from None
        if not all(isinstance(e, (str, int)) and not isinstance(e, bool) for e in entries):
            raise ValueError(f"--exclude file {path}: expected a json list of string or integer ids")
    else:
        entries = [line.split("#", 1)[0] for line in text.splitlines()]
    ids = frozenset(str(e).strip() for e in entries if str(e).strip())
    if not ids:
        raise ValueError(f"--exclude file {path} lists no ids")
    return ids


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
        raise ValueError(f"corpus '{recipe.name}' gives no ids to match --exclude against (Recipe.match_ids)")
    return kept, len(items) - len(kept)
