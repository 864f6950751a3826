"""fma: Free Music Archive tracks with template captions from genre, title and artist metadata.

Source: Defferrard et al. 2017, github.com/mdeff/fma (`fma_metadata.zip`, `fma_{small,medium,
large,full}.zip`). Licence: each track under its Creative Commons licence (json "license");
metadata CC BY 4.0.

Layout (`--src`)::

    fma_metadata/tracks.csv      two header rows (e.g. track/title, track/genres, set/split,
                                 set/subset) then a `track_id` row; list columns like "[21, 76]"
    fma_metadata/genres.csv      genre_id,#tracks,parent,title,top_level
    fma_<subset>/<tid[:3]>/<tid:06d>.mp3   (subset: small, medium, large, full)

Option `subset` (default large) picks the audio folder and the tracks: small is inside
medium, medium inside large; full holds every track, untrimmed.
Splits: set/split training -> "train", validation -> "valid", test -> "test".
Captions: 2 of `TEMPLATES` ("a hip-hop song titled "X" by Y"), with `GENRE_ONLY_TEMPLATES`
when title or artist is missing; genres are the names of track/genres (genre_top if empty).
Labels: those genre names. Ids: the track id (6 digits).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
from pathlib import Path

from data_recipes.base import RecipeError, register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, join_words, pick_captions, read_csv, read_text, row_error

TEMPLATES = (
    '{genres} music: "{title}" by {artist}',
    'a {genres} song titled "{title}" by {artist}',
    '"{title}", a {genres} track by {artist}',
    "{artist} performing {genres} music",
)
GENRE_ONLY_TEMPLATES = ("{genres} music", "a {genres} song", "a piece of {genres} music", "a {genres} track")
_SUBSETS = ("small", "medium", "large", "full")
_SPLITS = {"training": "train", "validation": "valid", "test": "test"}


@dataclasses.dataclass
class FMAConfig:
    """Which FMA subset (audio folder) to read."""

    subset: str = "large"  # small, medium, large or full


def read_tracks(path: Path) -> list[dict[tuple[str, str], str]]:
    """Rows of tracks.csv keyed by (level 0, level 1) column names, e.g. ("track", "title")."""
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} not found")
    rows = list(csv.reader(io.StringIO(read_text(path))))
    if len(rows) < 3:
        raise RecipeError(f"{path}: expected two header rows and a track_id row")
    columns = [("track_id", "")] + list(zip(rows[0][1:], rows[1][1:]))
    body = rows[3:] if rows[2][:1] == ["track_id"] else rows[2:]
    return [dict(zip(columns, row)) for row in body]


def parse_list(text: str) -> list:
    """'[21, 76]' -> [21, 76]; [] when empty or malformed."""
    try:
        value = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return []
    return list(value) if isinstance(value, (list, tuple)) else []


@register_recipe
class FMARecipe(ClipRecipe):
    """Free Music Archive (106k tracks, 161 genres); CC-licensed per track."""

    name = "fma"
    version = "1"
    splits = ("train", "valid", "test")
    config_cls = FMAConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        subset = self.config.subset
        if subset not in _SUBSETS:
            raise RecipeError(f"unknown FMA subset '{subset}'; known: {', '.join(_SUBSETS)}")
        path = src / "fma_metadata" / "tracks.csv"
        genres = {row["genre_id"]: row["title"] for row in read_csv(src / "fma_metadata" / "genres.csv")}
        items: list[ClipItem | BadRow] = []
        for index, row in enumerate(read_tracks(path), 1):
            track_id = row.get(("track_id", ""), "")
            if not track_id.isdigit() or row.get(("set", "split")) not in _SPLITS:
                if split == "train":  # a row without a split is reported once
                    items.append(row_error(path, index, "no numeric track_id or no set/split"))
                continue
            in_subset = subset == "full" or _SUBSETS.index(row.get(("set", "subset"), "full")) <= _SUBSETS.index(subset)
            if _SPLITS[row[("set", "split")]] == split and in_subset:
                items.append(self._item(src / f"fma_{subset}", int(track_id), row, genres))
        return items

    def _item(self, folder: Path, track_id: int, row: dict, genres: dict[str, str]) -> ClipItem | BadRow:
        names = [genres[str(g)] for g in parse_list(row.get(("track", "genres"), "")) if str(g) in genres]
        names = names or [n for n in [row.get(("track", "genre_top"), "")] if n]
        if not names:
            return BadRow("no_genre", f"track {track_id}: no genre to caption")
        title, artist = row.get(("track", "title"), ""), row.get(("artist", "name"), "")
        templates = TEMPLATES if title and artist else GENRE_ONLY_TEMPLATES
        key = f"{track_id:06d}"
        captions = pick_captions(templates, key, 2, genres=join_words(names), title=title, artist=artist)
        meta = {"title": title, "artist": artist, "album": row.get(("album", "title"), ""),
                "license": row.get(("track", "license"), "")}
        tags = [str(t) for t in parse_list(row.get(("track", "tags"), ""))]
        if tags:
            meta["tags"] = tags
        return ClipItem(key, str(folder / key[:3] / f"{key}.mp3"), captions, tuple(names), meta=meta)
