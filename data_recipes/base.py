"""What a corpus recipe is: `Sample`, the `Recipe` base class and the recipe registry.

A recipe knows one corpus' layout and nothing about tar files. It works in two steps so
the shared writer (`data_recipes.writer`) can split a corpus into shards deterministically
and convert them in parallel:

1. `items(src, split)`: a cheap, deterministically ordered list of picklable descriptors
   (file paths, row tuples, ...). Shard i holds a fixed slice of this list.
2. `load(item, sample_rate)`: the audio work for one item, in a worker process. It returns a
   `Sample`, or None / raises `SkipSample(reason)` for a bad item, which the writer skips
   and counts by reason; any other exception is counted as `error_<ExceptionName>`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from clap_lightning.registry import Registry


@dataclasses.dataclass
class Sample:
    """One audio clip with its metadata, as a recipe returns it."""

    stable_id: str  # corpus-unique id, stable across rebuilds; the key is `<source>-<stable_id>`
    audio: np.ndarray  # float32 in [-1, 1], mono [T] or channels-first [C, T]
    sample_rate: int  # rate of `audio`; the writer resamples to the build's rate when they differ
    meta: dict[str, Any]  # json fields; must hold "text": [str, ...]; "labels", "license", ... optional


class RecipeError(ValueError):
    """Bad input to a build: options, a corpus' layout or metadata, a build record (one line, status 2)."""


class SkipSample(Exception):
    """Raised by `Recipe.load` for a bad item; the writer counts it under `reason`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass
class NoOptions:
    """Options of a recipe that takes none."""


class Recipe:
    """Base class of corpus recipes; subclasses document source, licence, layout and captions.

    Args:
        config: an instance of the subclass' `config_cls` (recipe options).
    """

    name: ClassVar[str] = ""  # corpus name: `python -m data_recipes build NAME`, shard prefix, json "source"
    version: ClassVar[str] = ""  # bumped whenever the produced samples change; stored in manifests
    splits: ClassVar[tuple[str, ...]] = ()  # splits the corpus offers, built by default
    needs_src: ClassVar[bool] = True  # whether `--src` (the downloaded corpus) is required
    config_cls: ClassVar[type] = NoOptions  # dataclass of recipe options (`-o key=value` on the CLI)
    default_samples_per_shard: ClassVar[int] = 512  # used when --samples-per-shard is not given

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_cls()

    def items(self, src: Path | None, split: str) -> list[Any]:
        """Return the descriptors of one split's clips in a deterministic order."""
        raise NotImplementedError

    def load(self, item: Any, sample_rate: int) -> Sample | None:
        """Load (or synthesise) one item; `sample_rate` is the build's target rate, a hint."""
        raise NotImplementedError

    def match_ids(self, item: Any) -> tuple[str, ...]:
        """Return the ids `--exclude` compares with this item: its stable id first, then
        cross-corpus ids such as "freesound:1234" or "youtube:<ytid>" (cheap, from `items`)."""
        stable_id = getattr(item, "stable_id", None)
        return (stable_id,) if isinstance(stable_id, str) else ()

    def estimate_bytes(self, item: Any, sample_rate: int) -> int | None:
        """Return an upper-bound estimate of the item's encoded size, or None when unknown.

        Used only to plan shards under `--max-shard-bytes`; it must be deterministic and
        cheap (a file size or a duration from `items`, never decoding audio).
        """
        return None

    @classmethod
    def summary(cls) -> str:
        """Return the first line of the recipe's docstring (module docstring as fallback)."""
        doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


RECIPES: Registry[Recipe] = Registry("corpus")


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register a `Recipe` subclass under its `name`, configured by `config_cls`."""
    if not cls.name or not cls.version or not cls.splits:
        raise TypeError(f"recipe {cls.__name__} must set name, version and splits")
    RECIPES.register(cls.name, cls.config_cls)(cls)
    return cls


def _import_builtin_recipes() -> None:
    # Importing the modules runs their @register_recipe decorators; add new recipes here.
    from data_recipes import demo  # noqa: F401
    from data_recipes import generic  # noqa: F401
    from data_recipes import wavcaps  # noqa: F401
    from data_recipes import audioset  # noqa: F401
    from data_recipes import fsd50k  # noqa: F401
    from data_recipes import clotho  # noqa: F401
    from data_recipes import audiocaps  # noqa: F401
    from data_recipes import macs  # noqa: F401
    from data_recipes import wavtext5k  # noqa: F401
    from data_recipes import sounddescs  # noqa: F401
    from data_recipes import nsynth  # noqa: F401
    from data_recipes import fma  # noqa: F401
    from data_recipes import cmu_mosi  # noqa: F401
    from data_recipes import meld  # noqa: F401
    from data_recipes import iemocap  # noqa: F401
    from data_recipes import cmu_mosei  # noqa: F401
    from data_recipes import msp_podcast  # noqa: F401
    from data_recipes import cochlscene  # noqa: F401
    from data_recipes import ljspeech  # noqa: F401
    from data_recipes import epic_sounds  # noqa: F401
    from data_recipes import kinetics  # noqa: F401
    from data_recipes import findsounds  # noqa: F401


def recipe_names() -> list[str]:
    """Return the names of all registered recipes."""
    _import_builtin_recipes()
    return RECIPES.names()


def get_recipe_class(name: str) -> type[Recipe]:
    """Return the recipe class `name`; ValueError listing the known names otherwise."""
    _import_builtin_recipes()
    builder, _ = RECIPES.get(name)
    return builder  # type: ignore[return-value]


def build_recipe(name: str, options: Mapping[str, Any] | None = None) -> Recipe:
    """Build the recipe `name` with `options` validated against its config dataclass."""
    _import_builtin_recipes()
    return RECIPES.build(name, options, where=f"recipe.{name}")
