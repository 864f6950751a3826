"""Raw sample streams from tar shards: single pass for evaluation, weighted resampling for training.

A raw sample is the dict webdataset would give (`__key__`, `__url__`, one bytes value per
member extension). Nothing here decodes audio, so a training stream can be regenerated
and fast-forwarded cheaply when a run resumes mid-epoch.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections import Counter
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import webdataset as wds

from clap_lightning.errors import DataError, first_line

log = logging.getLogger(__name__)

# webdataset's rule: the key is the member path up to the first dot of its base name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# Consecutive failures (bad samples or shards that yield nothing) before a training worker
# concludes that its sources hold nothing usable.
MAX_CONSECUTIVE_FAILURES = 1000
MAX_REPORTED_SHARDS = 5  # unreadable or damaged shards named in a warning, per reason and worker
MAX_MEMBER_BYTES = 1 << 31  # a larger tar member is damage (a clip of hours of 48-kHz float audio is less)


class FailureGuard:
    """Count consecutive failures and raise DataError when there are too many in a row."""

    def __init__(self, what: str, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.what = what
        self.limit = limit
        self.count = 0

    def fail(self, skipped: Counter) -> None:
        self.count += 1
        if self.count >= self.limit:
            raise DataError(f"no valid sample in {self.count} consecutive tries from {self.what} "
                            f"(skipped: {format_skipped(skipped)})")

    def ok(self) -> None:
        self.count = 0


def format_skipped(skipped: dict[str, int]) -> str:
    """`bad_audio=2, bad_tar=1`: skip counts by reason, for messages ("none" when empty)."""
    return ", ".join(f"{reason}={count}" for reason, count in sorted(skipped.items()) if count) or "none"


class TarFormatError(ValueError):
    """A tar stream that is damaged or ends inside a member (`member`: its path, when known)."""

    def __init__(self, message: str, member: Optional[str] = None) -> None:
        super().__init__(message)
        self.member = member


class NotATarError(TarFormatError):
    """A stream whose first block is not a tar header."""


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular and contiguous files


def _tar_number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 when the first byte has its high bit set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") | (field[0] & 0x3F) << (8 * (len(field) - 1))
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number in a tar header: {text[:20]!r}") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """The `length key=value\n` records of a pax extended header (TarFormatError if malformed)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        if length <= space - pos or pos + length > len(data):
            raise TarFormatError(f"malformed pax record at byte {pos}")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    if "size" in records and not records["size"].isdigit():
        raise TarFormatError(f"bad pax size {records['size'][:20]!r}")
    return records


def iter_tar_files(stream) -> Iterator[tuple[str, bytes]]:
    """(path, data) of every regular file of a tar stream (plain or gzipped), in archive order.

    Reads ustar, GNU (long names) and pax (path, size) headers, checks every header's
    checksum, and skips directories, links and other members. Python's `tarfile` does the
    same with several Python-level reads and objects per member, which cost about a tenth
    of a loader worker's time per clip; here a member is one header read and one data read.

    An empty stream is an archive with no member. A gzipped stream is read to its end, so
    that gzip checks its CRC: a flipped bit that still inflates is reported, not silent.

    Raises:
        NotATarError: the first block is not a valid tar header.
        TarFormatError: a later bad header, a truncated member or header, a member larger
            than MAX_MEMBER_BYTES, or an archive that stops before its end-of-archive block.
    """
    long_name, pax, first = None, {}, True
    while True:
        header = stream.read(_BLOCK)
        if first and header[:2] == b"\x1f\x8b":  # a gzipped tar (.tar.gz shards)
            stream = gzip.GzipFile(fileobj=_Prefixed(header, stream), mode="rb")
            header = stream.read(_BLOCK)
        if not header and not first:  # tar writers end every archive with zero blocks
            raise TarFormatError("the archive stops before its end-of-archive block (truncated)")
        if not header or header == _ZERO_BLOCK:  # end of archive
            if isinstance(stream, gzip.GzipFile):
                while stream.read(1 << 16):  # to the gzip trailer: its CRC and length are checked there
                    pass
            return
        error = NotATarError if first else TarFormatError
        if len(header) < _BLOCK:
            raise error("truncated tar header")
        try:
            stored = _tar_number(header[148:156])
        except TarFormatError as err:
            raise error(str(err)) from None
        if stored != sum(header[:148]) + 256 + sum(header[156:]):  # the checksum field counts as spaces
            raise error("bad tar header checksum")
        first = False
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _tar_number(header[124:136])
        if size > MAX_MEMBER_BYTES:  # a crafted or corrupt size must not allocate it
            raise TarFormatError(f"tar member of {size} bytes, over the {MAX_MEMBER_BYTES} accepted")
        if "path" in pax:
            name = pax["path"]
        elif long_name is not None:
            name = long_name
        else:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar" and header[345] != 0:
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
        data = stream.read(size) if size else b""
        if len(data) < size:
            raise TarFormatError(f"tar member {name} truncated: {len(data)} of {size} bytes", name)
        if size % _BLOCK:
            stream.read(_BLOCK - size % _BLOCK)
        if kind == b"x":
            pax = _pax_records(data)
            continue
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind in (b"g", b"K"):  # global pax header, GNU long link target
            continue
        long_name, pax = None, {}
        if kind in _FILE_TYPES:
            yield name, data


class _Prefixed:
    """A read-only stream: `head`, then the rest of `stream` (to hand a peeked block back)."""

    def __init__(self, head: bytes, stream) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size is None or size < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out + (self.stream.read(size - len(out)) if len(out) < size else b"")


def read_tar_samples(url: str, skipped: Counter) -> Iterator[dict[str, Any]]:
    """Yield the raw samples of one shard, grouping consecutive members by key.

    A shard that cannot be opened or is not a tar is skipped with a warning
    (`unreadable_shard`); one with no member (a 0-byte file, an empty tar) is `empty_shard`;
    a damaged member, a truncated tar or a corrupt gzip stream ends the shard there
    (`bad_tar`), dropping the sample being read unless all its members were read before
    the damage (a bad header after them).
    """
    try:
        stream = wds.gopen(url, "rb", bufsize=1 << 20)  # large reads: members are ~1 MB of FLAC
    except Exception as err:  # missing file, failed pipe command
        _count_unreadable(url, err, skipped)
        return
    current: Optional[dict[str, Any]] = None
    members = 0
    try:
        for name, data in iter_tar_files(stream):
            members += 1
            match = _KEY_EXT.match(name)
            if not match:
                continue
            key, ext = match.group(1), match.group(2).lower()
            if current is not None and (current["__key__"] != key or ext in current):  # complete before reading on
                yield current  # (a repeated key.ext starts another sample: nothing is overwritten)
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = data
    except NotATarError as err:
        _count_unreadable(url, err, skipped)
        return
    except (TarFormatError, OSError, EOFError, zlib.error) as err:  # gzip: BadGzipFile is an OSError
        match = _KEY_EXT.match(getattr(err, "member", None) or "")
        where = f"at key {match.group(1)}" if match else f"after key {current['__key__']}" if current else "at start"
        # The pending sample's members were read whole unless the damage is in one of them, or
        # the stream itself (gzip, I/O) failed; a missing member is then counted by the decoder.
        if (current is not None and isinstance(err, TarFormatError)
                and (not match or match.group(1) != current["__key__"])):
            yield current
        skipped["bad_tar"] += 1
        if skipped["bad_tar"] <= MAX_REPORTED_SHARDS:
            log.warning("shard %s is damaged %s: %s", url, where, first_line(err))
        current = None
    else:
        if not members:
            skipped["empty_shard"] += 1
            if skipped["empty_shard"] <= MAX_REPORTED_SHARDS:
                log.warning("skipping shard %s: it holds no file", url)
    finally:
        stream.close()
    if current is not None:
        yield current


def _count_unreadable(url: str, err: BaseException, skipped: Counter) -> None:
    skipped["unreadable_shard"] += 1
    if skipped["unreadable_shard"] <= MAX_REPORTED_SHARDS:
        log.warning("skipping shard %s: cannot open it (%s)", url, first_line(err))


def pass_share(urls: Sequence[str], rank: int, world_size: int, worker: int,
               workers: int) -> tuple[list[str], int, int]:
    """The one rule splitting a single pass over ranks and loader workers.

    Whole shards by rank then by worker; with fewer shards than ranks, shards by worker and
    samples by rank (an idle rank would hang the others' collectives).

    Returns:
        (this worker's shards, rank, world size) to hand to `single_pass`.
    """
    if len(urls) >= world_size:
        return list(urls[rank::world_size][worker::workers]), 0, 1
    return list(urls[worker::workers]), rank, world_size


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

    def draws() -> Iterator[dict[str, Any]]:
        while True:
            index = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(streams) - 1)
            sample = next(streams[index])
            sample["__source__"] = index
            yield sample

    yield from enumerate(shuffle_buffered(draws(), shuffle_buffer, rng))


def shuffle_buffered(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """`items` shuffled through a buffer of `size` (no shuffling when `size` <= 1), drained at the end."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        buffer.append(item)
        if len(buffer) < size:
            continue
        yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list[Any], rng: np.random.Generator) -> Any:
    pick = int(rng.integers(len(buffer)))
    buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
    return buffer.pop()
