"""The shard tar reader against Python's tarfile: formats, long names, gzip, damage."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter

import pytest

from clap_lightning.data.stream import NotATarError, TarFormatError, iter_tar_files, read_tar_samples

LONG = "a-directory-name-long-enough/" * 5 + "clip-0001.flac"  # 159 characters: beyond ustar's 100


def make_tar(fmt: int, members: list[tuple[str, bytes]], extra=()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "ünïcode"} if fmt == tarfile.PAX_FORMAT else {}
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


MEMBERS = [("k0.flac", b"\x00\x01" * 700), ("k0.json", b'{"text": ["x"]}'), (LONG, b"z" * 512),
           ("dir/k1.json", b""), ("k2.flac", bytes(range(256)) * 9)]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_matches_tarfile_on_every_format(fmt):
    directory = tarfile.TarInfo("dir")
    directory.type = tarfile.DIRTYPE
    data = make_tar(fmt, MEMBERS, extra=[directory])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    assert expected == MEMBERS  # the fixture really holds what it says
    assert list(iter_tar_files(io.BytesIO(data))) == expected


def test_ustar_prefix_field():
    name = "p" * 90 + "/" + "q" * 60 + ".flac"  # fits ustar only through its 155-byte prefix
    data = make_tar(tarfile.USTAR_FORMAT, [(name, b"abc")])
    assert data[345:350] == b"ppppp"
    assert list(iter_tar_files(io.BytesIO(data))) == [(name, b"abc")]


def test_gzipped_tar():
    assert list(iter_tar_files(io.BytesIO(gzip.compress(make_tar(tarfile.GNU_FORMAT, MEMBERS))))) == MEMBERS


def test_damage_is_reported():
    data = bytearray(make_tar(tarfile.GNU_FORMAT, MEMBERS))
    with pytest.raises(NotATarError):
        list(iter_tar_files(io.BytesIO(b"this is not a tar file")))
    cut = bytes(data[:512 + 700])  # inside k0.flac's data
    with pytest.raises(TarFormatError, match="k0.flac truncated") as err:
        list(iter_tar_files(io.BytesIO(cut)))
    assert err.value.member == "k0.flac"
    data[2048 + 10] ^= 0xFF  # in k0.json's header: after k0.flac's header and its 3 data blocks
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_tar_files(io.BytesIO(bytes(data))))


def test_read_tar_samples_groups_and_counts(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(make_tar(tarfile.PAX_FORMAT, MEMBERS))
    skipped = Counter()
    samples = list(read_tar_samples(str(path), skipped))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples] == [
        ("k0", ["flac", "json"]), (LONG[:-len(".flac")], ["flac"]), ("dir/k1", ["json"]), ("k2", ["flac"])]
    assert not skipped
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [s["__key__"] for s in read_tar_samples(str(gz), skipped)] == [s["__key__"] for s in samples]
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
    assert list(read_tar_samples(str(tmp_path / "junk.tar"), skipped)) == [] and skipped == {"unreadable_shard": 1}


@pytest.mark.parametrize("record", [b"xx path=a\n", b"0 path=a\n", b"99 path=a\n", b"13 size=abc\n"])
def test_a_malformed_pax_header_is_damage_not_a_crash(tmp_path, record):
    def member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data)
        return info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)

    path = tmp_path / "pax.tar"
    path.write_bytes(b"".join(member(n, d) for n, d in MEMBERS[:2]) + member("pax", record, tarfile.XHDTYPE)
                     + member(*MEMBERS[4]) + bytes(1024))
    with pytest.raises(TarFormatError, match="pax"):
        list(iter_tar_files(io.BytesIO(path.read_bytes())))
    skipped = Counter()
    # Counted and the shard ends there; k0, read whole before the bad header, is kept.
    assert [s["__key__"] for s in read_tar_samples(str(path), skipped)] == ["k0"] and skipped == {"bad_tar": 1}


def test_a_corrupt_gzip_stream_is_a_damaged_shard_in_process_and_in_a_worker(tmp_path):
    """zlib's own errors ("invalid code lengths set") used to escape the reader and kill the worker."""
    import zlib

    from clap_lightning.data.pipeline import ClapLoader
    from tests.shard_factory import corrupt_gzip, good_members, write_tar
    from tests.unit.test_loader import keys_of, make_stream

    plain = write_tar(tmp_path / "ok.tar", [m for i in range(3) for m in good_members(f"ok-{i}")])
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(corrupt_gzip(plain.read_bytes()))
    with pytest.raises(zlib.error):  # the fixture breaks the deflate stream itself
        list(iter_tar_files(io.BytesIO(bad.read_bytes())))
    skipped = Counter()
    assert list(read_tar_samples(str(bad), skipped)) == [] and skipped == {"bad_tar": 1}
    batches = list(ClapLoader(make_stream([[str(bad), str(plain)]], batch_size=2), batch_size=None, num_workers=1))
    assert sorted(keys_of(batches)) == ["ok-0", "ok-1", "ok-2"]
    assert sum((Counter(b["skipped"]) for b in batches), Counter()) == {"bad_tar": 1}


def test_empty_shards_are_skipped_and_counted(tmp_path):
    """A 0-byte file or a tar with no member used to yield nothing with no counter."""
    from tests.shard_factory import good_members, write_tar
    from tests.unit.test_loader import keys_of, make_stream

    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    empty = write_tar(tmp_path / "empty.tar", [])
    gz_empty = tmp_path / "empty.tar.gz"
    gz_empty.write_bytes(gzip.compress(empty.read_bytes()))
    for path in (zero, empty, gz_empty):
        skipped = Counter()
        assert list(read_tar_samples(str(path), skipped)) == [] and skipped == {"empty_shard": 1}, path
    good = write_tar(tmp_path / "good.tar", [m for i in range(3) for m in good_members(f"g-{i}")])
    urls = [str(zero), str(good), str(empty), str(gz_empty)]
    batches = list(make_stream([urls], batch_size=2))
    assert sorted(keys_of(batches)) == ["g-0", "g-1", "g-2"]
    assert sum((Counter(b["skipped"]) for b in batches), Counter()) == {"empty_shard": 3}
    train = make_stream([urls], batch_size=2, is_train=True, batches_per_worker=5)
    assert len(list(train)) == 5 and set(train.decoder.skipped) == {"empty_shard"}


def _layout(data: bytes) -> tuple[list[tarfile.TarInfo], int]:
    """The members of a tar and the offset of its end-of-archive block."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    last = members[-1]
    return members, last.offset_data + -(-last.size // 512) * 512


@pytest.mark.parametrize("where", ["end_block", "mid_header", "between_members"])
def test_a_cut_between_or_in_headers_keeps_whole_samples_and_counts_the_cut(tmp_path, where):
    """A tar cut at a block boundary used to read as a shorter, valid archive: samples lost, nothing counted."""
    data = make_tar(tarfile.GNU_FORMAT, [("k0.flac", b"a" * 600), ("k0.json", b"{}"), ("k1.flac", b"b" * 700),
                                         ("k1.json", b"{}")])
    members, end = _layout(data)
    cut = {"end_block": end, "mid_header": members[2].offset + 100, "between_members": members[3].offset}[where]
    path = tmp_path / "cut.tar"
    path.write_bytes(data[:cut])
    skipped = Counter()
    samples = {
        s["__key__"]: sorted(k for k in s if not k.startswith("__")) for s in read_tar_samples(str(path), skipped)
    }
    expected = {"end_block": {"k0": ["flac", "json"], "k1": ["flac", "json"]}, "mid_header": {"k0": ["flac", "json"]},
                "between_members": {"k0": ["flac", "json"], "k1": ["flac"]}}[where]
    assert samples == expected and skipped == {"bad_tar": 1}


def test_a_gzip_flip_that_still_inflates_is_caught_by_the_crc(tmp_path):
    """Bit flips in stored (uncompressed) deflate blocks inflate to wrong bytes with no zlib error."""
    import zlib

    data = make_tar(tarfile.GNU_FORMAT, [("k0.flac", bytes(range(256)) * 4), ("k0.json", b'{"text": ["x"]}')])
    packed = bytearray(gzip.compress(data, compresslevel=0, mtime=0))  # level 0: stored blocks, bytes as they are
    at = packed.index(b"\x00\x01\x02\x03")  # inside k0.flac's data
    packed[at + 40] ^= 0x01
    path = tmp_path / "flip.tar.gz"
    path.write_bytes(bytes(packed))
    assert zlib.decompress(bytes(packed[10:-8]), -zlib.MAX_WBITS) != data  # inflates, differently
    skipped = Counter()
    list(read_tar_samples(str(path), skipped))
    assert skipped == {"bad_tar": 1}


def test_a_repeated_member_starts_another_sample(tmp_path):
    path = tmp_path / "dup.tar"
    path.write_bytes(make_tar(tarfile.GNU_FORMAT, [("k.flac", b"1"), ("k.json", b"{}"), ("k.flac", b"2"),
                                                   ("k.json", b"{}")]))
    skipped = Counter()
    assert [s["flac"] for s in read_tar_samples(str(path), skipped)] == [b"1", b"2"] and not skipped


def test_a_member_size_over_the_limit_is_damage_without_allocating_it(tmp_path):
    info = tarfile.TarInfo("k.flac")
    info.size = 1 << 40  # base-256 in a GNU header; a checksum-valid header can claim a terabyte
    path = tmp_path / "huge.tar"
    path.write_bytes(make_tar(tarfile.GNU_FORMAT, [("a.json", b"{}")])[:1024] + info.tobuf(tarfile.GNU_FORMAT)
                     + b"x" * 512)
    with pytest.raises(TarFormatError, match="over the"):
        list(iter_tar_files(io.BytesIO(path.read_bytes())))
    skipped = Counter()
    assert [s["__key__"] for s in read_tar_samples(str(path), skipped)] == ["a"] and skipped == {"bad_tar": 1}
