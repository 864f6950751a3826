"""Resolve a shard specification into a list of shard URLs and a sample count."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import braceexpand

from clap_lightning.data.schema import MANIFEST_NAME, exclude_digest, read_exclude_file, read_manifest
from clap_lightning.errors import DataError, first_line


@dataclass
class ShardSource:
    """Shard URLs and, when a manifest says so, how many samples they hold."""

    urls: list[str]
    num_samples: Optional[int] = None
    builds: list[Optional[dict]] = field(default_factory=list)  # each part's manifest `build` (None: no manifest)


def load_manifest(split_dir: Path) -> dict:
    """A split's manifest through the checked reader (`schema.read_manifest`), needing only `shards`.

    Raises:
        DataError: not json, not an object, no `shards` list, or entries of the wrong type (one line).
    """
    try:
        manifest = read_manifest(split_dir, required=("shards",))
    except (OSError, ValueError) as err:
        raise DataError(first_line(err)) from None
    where = split_dir / MANIFEST_NAME
    if not isinstance(manifest["shards"], list):
        raise DataError(f"manifest {where}: 'shards' must be a list, found {type(manifest['shards']).__name__}")
    for i, shard in enumerate(manifest["shards"]):
        name = shard.get("name") or shard.get("path") if isinstance(shard, dict) else shard
        count = shard.get("count", shard.get("samples")) if isinstance(shard, dict) else None
        if not isinstance(name, str) or not name or not _is_count(count, allow_none=True):
            raise DataError(f"manifest {where}: shards[{i}] must be a file name or {{name, count}}, "
                            f"found {shard!r:.80}")
    total = manifest.get("num_samples", manifest.get("samples"))
    if not _is_count(total, allow_none=True):
        raise DataError(f"manifest {where}: num_samples must be a count, found {total!r:.80}")
    return manifest


def _is_count(value, allow_none: bool) -> bool:
    return (value is None and allow_none) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _from_manifest(split_dir: Path) -> ShardSource:
    manifest = load_manifest(split_dir)
    urls, counts = [], []
    for shard in manifest["shards"]:
        name = shard if isinstance(shard, str) else shard.get("name") or shard.get("path")
        urls.append(str(split_dir / Path(name).name))
        counts.append(None if isinstance(shard, str) else shard.get("count", shard.get("samples")))
    total = manifest.get("num_samples", manifest.get("samples"))
    if total is None and counts and None not in counts:
        total = sum(counts)
    build = manifest.get("build")
    return ShardSource(urls, total, [build if isinstance(build, dict) else None])


def feature_frontend(source: ShardSource, spec: str) -> Optional[dict]:
    """The front end a source's log-mel shards were made with (manifest `build.frontend`), None for waveform shards.

    Log-mel shards are known by their manifest (`python -m data_recipes prepare` writes
    `build.format: logmel`), so they are given as split directories.

    Raises:
        DataError: the source mixes log-mel and other shards, or log-mel shards of two front ends.
    """
    logmel = [isinstance(b, dict) and b.get("format") == "logmel" for b in source.builds]
    if not any(logmel):
        return None
    if not all(logmel):
        raise DataError(f"{spec} mixes log-mel and waveform shards: give each kind its own source")
    frontends = [b.get("frontend") for b in source.builds]
    if not isinstance(frontends[0], dict) or any(f != frontends[0] for f in frontends):
        raise DataError(f"{spec}: its log-mel shards record "
                        f"{'no' if not isinstance(frontends[0], dict) else 'different'} "
                        "front ends (manifest build.frontend); prepare them again with one --model-config")
    return frontends[0]


def resolve_shards(spec: str) -> ShardSource:
    """Resolve `spec` into shard URLs.

    Accepted forms: a shard file (`.tar`, `.tar.gz`, `.tgz`), a split directory (its
    `manifest.json`, else its shard files), a text file with one URL per line, a brace pattern
    (`data/x-{000000..000009}.tar`), or a `pipe:` URL (e.g. `pipe:aws s3 cp
    s3://bucket/x-{000000..000009}.tar -`). Several forms may be joined with `::`.

    Raises:
        DataError: the directory or file does not exist, or no shard was found.
    """
    if not spec:
        raise DataError("no shards given (empty shard specification)")
    urls: list[str] = []
    total: Optional[int] = 0
    builds: list[Optional[dict]] = []
    for part in spec.split("::"):
        source = _resolve_one(part)
        urls += source.urls
        total = None if total is None or source.num_samples is None else total + source.num_samples
        builds += source.builds or [None]
    if not urls:
        raise DataError(f"no shards found in {spec}")
    return ShardSource(urls, total, builds)


SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # the tar reader takes gzipped shards as they are


def is_shard_name(name: str) -> bool:
    """True for a file name the loader reads as a shard (`.tar`, `.tar.gz`, `.tgz`)."""
    return name.endswith(SHARD_SUFFIXES)


def _resolve_one(spec: str) -> ShardSource:
    if spec.startswith("pipe:") or "://" in spec:
        return ShardSource(list(braceexpand.braceexpand(spec)))
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _from_manifest(path)
        return ShardSource(sorted(str(p) for p in path.iterdir() if is_shard_name(p.name) and p.is_file()))
    if path.suffix == ".txt" and path.is_file():
        return ShardSource([line.strip() for line in path.read_text().splitlines() if line.strip()])
    if "{" in spec:
        urls = list(braceexpand.braceexpand(spec))
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DataError(f"{len(missing)} of {len(urls)} shards in {spec} do not exist, e.g. {missing[0]}")
        return ShardSource(urls)
    if path.is_file() and is_shard_name(path.name):
        return ShardSource([str(path)])
    raise DataError(f"shard directory not found: {spec}")


def check_built_with_exclusion(specs: list[str], exclude_list: str) -> None:
    """Refuse training shards that were not built with the leakage list `exclude_list`.

    Each part of each spec must be a split directory whose manifest records that list's
    digest (`python -m data_recipes build --exclude FILE` writes it), so a run configured to
    keep evaluation clips out cannot start on shards that still hold them.

    Raises:
        DataError: the list is unreadable, a part is not a split directory with a manifest,
            or its manifest records no exclusion list or another one.
    """
    try:
        expected = exclude_digest(read_exclude_file(exclude_list))
    except (OSError, ValueError) as err:
        raise DataError(f"data.exclude_list: {err}") from None
    for spec in specs:
        for part in spec.split("::"):
            manifest_path = Path(part) / MANIFEST_NAME
            if not manifest_path.is_file():
                raise DataError(f"data.exclude_list is set but {part} has no {MANIFEST_NAME} "
                                "recording how it was built; "
                                f"give split directories built with --exclude {exclude_list}")
            build = load_manifest(Path(part)).get("build")
            recorded = (build.get("exclude") if isinstance(build, dict) else None) or {}
            recorded = recorded if isinstance(recorded, dict) else {}
            if recorded.get("sha1") != expected:
                found = f"another list (sha1 {recorded['sha1'][:12]})" if recorded.get("sha1") else "no list"
                raise DataError(f"{part} was built with {found}, not data.exclude_list {exclude_list}; rebuild it with "
                                f"`python -m data_recipes build ... --exclude {exclude_list}`")
