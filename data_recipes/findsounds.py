"""findsounds: sound files found through the findsounds.com search engine, from a crawl dump.

Source: findsounds.com (Comparisonics) indexes sound effects hosted on third-party sites;
there is no dataset release, so a crawl of its result pages and of the linked files is
needed. Licence: unknown; every file belongs to its host site (legal review before use).

Layout (`--src`), defined here for such a crawl::

    crawl.jsonl        one json object per fetched file:
                         url          the file's address (required; the id is sha1(url)[:16])
                         file         path of the fetched file under --src (required)
                         description  the text shown with the hit (optional)
                         keywords     list of keywords / the search query that found it (optional)
                         title        the hit's title or link text (optional)
                         host, page, format, sample_rate, channels, duration   (optional, kept)
    files/<sha1[:2]>/<sha1>.<ext>      the fetched files (any format soundfile reads)

Captions: the `description`, the `title` and, from `keywords`, 1 of `TEMPLATES` ("the sound
of dog, bark"); when none of these exist, the file name's words ("dog_bark2.wav" -> "dog
bark") fill a template. Labels: the keywords. Split: a stable hash split holds out
`test_fraction` as "test". Ids: sha1(url)[:16]; cross-corpus id `url:<url>`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, HeldOutConfig, join_words, parse_float, pick_captions,
                                 read_text, split_by_hash, unique)

TEMPLATES = ("the sound of {words}", "a sound effect of {words}", "{words} sound", "a recording of {words}")
_KEEP = ("url", "host", "page", "format", "sample_rate", "channels")


def file_name_words(url: str) -> str:
    """'http://x/sfx/Dog_Bark2.wav' -> 'dog bark'."""
    stem = Path(unquote(urlparse(url).path)).stem
    return " ".join(re.sub(r"[\W\d_]+", " ", stem).lower().split())


@register_recipe
class FindSoundsRecipe(ClipRecipe):
    """findsounds.com crawl dump (layout defined in this module); licence per host site."""

    name = "findsounds"
    version = "1"
    splits = ("train", "test")
    config_cls = HeldOutConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        path = src / "crawl.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"crawl dump {path} not found")
        items: list[ClipItem | BadRow] = []
        for index, line in enumerate(read_text(path).splitlines(), 1):
            if line.strip():
                items.append(self._item(src, index, line))
        return split_by_hash(items, split, self.config.test_fraction)

    def _item(self, src: Path, index: int, line: str) -> ClipItem | BadRow:
        try:
            hit: Any = json.loads(line)
        except json.JSONDecodeError as err:
            return BadRow("malformed_row", f"crawl.jsonl line {index}: {err}")
        if not isinstance(hit, dict) or not hit.get("url") or not hit.get("file"):
            return BadRow("malformed_row", f"crawl.jsonl line {index}: needs 'url' and 'file'")
        url = str(hit["url"])
        clip_id = hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]
        keywords = [str(k) for k in hit.get("keywords") or [] if str(k).strip()]
        words = join_words(keywords) or file_name_words(url)
        generated = pick_captions(TEMPLATES, clip_id, 1, words=words) if words else ()
        captions = unique([str(hit.get("description") or ""), str(hit.get("title") or ""), *generated])
        if not captions:
            return BadRow("no_caption", f"crawl.jsonl line {index}: no description, title, keywords or file name words")
        meta = {k: hit[k] for k in _KEEP if hit.get(k) not in (None, "")}
        return ClipItem(clip_id, str(src / hit["file"]), captions, tuple(keywords), alt_ids=(f"url:{url}",),
                        meta=meta, duration=parse_float(hit.get("duration")))
