"""Name -> (builder, config dataclass) registries; the one place components are looked up by name."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, Mapping, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clap_lightning.errors import ConfigError, first_line

T = TypeVar("T")


class RegistryError(ConfigError):
    """An unknown name, or options that do not fit the named component's config (one line)."""


class Registry(Generic[T]):
    """Maps a name to a builder and the dataclass that configures it.

    Args:
        kind: what the registry holds, used in error messages ("audio encoder").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], type]] = {}

    def register(self, name: str, config_cls: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register `builder(config)` under `name`; use as a decorator."""
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"{self.kind} '{name}': config class must be a dataclass")

        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = (builder, config_cls)
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> tuple[Callable[..., T], type]:
        if not isinstance(name, str) or name not in self._entries:
            raise RegistryError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}")
        return self._entries[name]

    def parse_config(self, name: str, options: Mapping[str, Any] | None, where: str = "") -> Any:
        """Validate `options` against the config dataclass registered as `name`.

        Raises:
            ValueError: one line naming the offending key (prefixed by `where`).
        """
        _, config_cls = self.get(name)
        schema = OmegaConf.structured(config_cls)
        try:
            merged = OmegaConf.merge(schema, dict(options or {}))
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            prefix = f"{where}." if where else ""
            reason = first_line(err)  # OmegaConf appends "full_key: ..." lines
            raise RegistryError(f"bad config key '{prefix}{key}' for {self.kind} '{name}': {reason}") from None
        except TypeError as err:  # "Cannot merge incompatible container types": a list for a mapping or the reverse
            key = next((k for k, v in dict(options or {}).items() if not _merges(schema, {k: v})), "?")
            prefix = f"{where}." if where else ""
            raise RegistryError(f"bad config key '{prefix}{key}' for {self.kind} '{name}': {first_line(err)}") from None
        return OmegaConf.to_object(merged)

    def build(self, name: str, options: Mapping[str, Any] | Any | None = None, where: str = "") -> T:
        """Build the component `name` from a mapping of options or a ready config dataclass."""
        builder, config_cls = self.get(name)
        config = options if isinstance(options, config_cls) else self.parse_config(name, options, where)
        return builder(config)


def _merges(schema: Any, options: dict) -> bool:
    try:
        OmegaConf.merge(schema, options)
    except (OmegaConfBaseException, TypeError):
        return False
    return True
