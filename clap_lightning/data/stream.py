"""Raw sample streams from tar shards: single pass for evaluation, weighted resampling for training.

A raw sample is the dict webdataset would give (`__key__`, `__url__`, one bytes value per
member extension). Nothing here decodes audio, so a training stream can be regenerated
and fast-forwarded cheaply when a run resumes mid-epoch.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections import Counter
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import webdataset as wds

from clap_lightning.errors import DataError

log = logging.getLogger(__name__)

# webdataset's rule: the key is the member path up to the first dot of its base name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# Consecutive failures (bad samples or shards that yield nothing) before a training worker
# concludes that its sources hold nothing usable.
MAX_CONSECUTIVE_FAILURES = 1000
MAX_REPORTED_SHARDS = 5  # unreadable or damaged shards named in a warning, per reason and worker


class FailureGuard:
    """Count consecutive failures and raise DataError when there are too many in a row."""

    def __init__(self, what: str, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.what = what
        self.limit = limit
        self.count = 0

    def fail(self, skipped: Counter) -> None:
        self.count += 1
        if self.count >= self.limit:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
            raise DataError(f"no valid sample in {self.count} consecutive tries from {self.what} (skipped: {reasons})")

    def ok(self) -> None:
        self.count = 0


def read_tar_samples(url: str, skipped: Counter) -> Iterator[dict[str, Any]]:
    """Yield the raw samples of one shard, grouping consecutive members by key.

    A shard that cannot be opened is skipped with a warning (`unreadable_shard`); a damaged
    member or truncated tar ends the shard there (`bad_tar`), dropping the sample being read.
    """
    stream = None
    try:
        stream = wds.gopen(url, "rb", bufsize=1 << 20)  # large reads: members are ~1 MB of FLAC
        tar = tarfile.open(fileobj=stream, mode="r|*")
    except Exception as err:  # missing file, failed pipe command, not a tar
        if stream is not None:
            stream.close()
        skipped["unreadable_shard"] += 1
        if skipped["unreadable_shard"] <= MAX_REPORTED_SHARDS:
            log.warning("skipping shard %s: cannot open it (%s)", url, _first_line(err))
        return
    current: Optional[dict[str, Any]] = None
    try:
        for member in tar:
            if not member.isfile():
                continue
            match = _KEY_EXT.match(member.name)
            if not match:
                continue
            key, ext = match.group(1), match.group(2).lower()
            if current is not None and current["__key__"] != key:  # complete before reading on
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        skipped["bad_tar"] += 1
        if skipped["bad_tar"] <= MAX_REPORTED_SHARDS:
            log.warning("shard %s is damaged at key %s: %s", url, current and current["__key__"], _first_line(err))
        current = None
    finally:
        tar.close()
        stream.close()
    if current is not None:
        yield current


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def single_pass(urls: Sequence[str], skipped: Counter, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, Any]]:
    """Every sample of `urls`, in order, once; with `world_size` > 1, only this rank's share.

    The share is sample j of shard i when (i + j) % world_size == rank, so fewer shards than
    ranks still give every rank samples (an idle rank would hang the others' collectives).
    Samples of other ranks are skipped before decoding.
    """
    for i, url in enumerate(urls):
        for j, sample in enumerate(read_tar_samples(url, skipped)):
            if (i + j) % world_size == rank:
                yield sample


def resampled_shards(urls: Sequence[str], rng: np.random.Generator, skipped: Counter,
                     guard: FailureGuard) -> Iterator[dict[str, Any]]:
    """Samples of shards drawn uniformly with replacement from `urls`, forever."""
    while True:
        url = urls[int(rng.integers(len(urls)))]
        count = 0
        for sample in read_tar_samples(url, skipped):
            count += 1
            yield sample
        if count == 0:
            guard.fail(skipped)


def mixed_stream(sources: Sequence[Sequence[str]], weights: Sequence[float], seed: Sequence[int],
                 shuffle_buffer: int, skipped: Counter, guard: FailureGuard) -> Iterator[tuple[int, dict]]:
    """Mix resampled sources in proportion to `weights`, shuffle, and number the samples.

    Every draw comes from generators seeded by `seed` (seed, epoch, rank, worker), so the
    stream, numbering included, is a pure function of the shards and `seed`.

    Yields:
        (position, raw sample), position 0, 1, 2, ... in output order; the sample carries
        `__source__`, the index of the source it came from.
    """
    rng = np.random.default_rng([*seed, len(sources)])
    streams = [resampled_shards(urls, np.random.default_rng([*seed, i]), skipped, guard)
               for i, urls in enumerate(sources)]
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64) / float(sum(weights)))
    buffer: list[dict] = []
    position = 0
    while True:
        index = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(streams) - 1)
        sample = next(streams[index])
        sample["__source__"] = index
        if shuffle_buffer > 1:
            buffer.append(sample)
            if len(buffer) < shuffle_buffer:
                continue
            pick = int(rng.integers(len(buffer)))
            buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
            sample = buffer.pop()
        yield position, sample
        position += 1
