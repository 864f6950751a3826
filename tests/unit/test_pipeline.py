import json
import tarfile

import numpy as np
import pytest
import torch

from clap_lightning.data.pipeline import ClipDecoder, stack_for_transfer
from clap_lightning.data.schema import validate_sample_json
from clap_lightning.data.sources import resolve_shards
from clap_lightning.errors import DataError
from tests.unit.test_audio_io import flac_bytes


def raw_sample(key="demo-1", text=("a tone",), audio=None, rate=16000, json_bytes=None):
    audio = np.full(8000, 0.1, dtype=np.float32) if audio is None else audio
    meta = {"text": list(text), "source": "demo", "id": key, "split": "train", "sample_rate": rate,
            "duration": len(audio) / rate, "labels": ["tone"]}
    return {"__key__": key, "flac": flac_bytes(audio, rate) if len(audio) else b"",
            "json": json_bytes if json_bytes is not None else json.dumps(meta).encode()}


def test_decoder_crops_resamples_and_keeps_metadata():
    decoder = ClipDecoder(sample_rate=8000, clip_samples=6000, pad_mode="repeat", is_train=False)
    out = decoder(raw_sample(audio=np.full(16000, 0.25, dtype=np.float32)))
    assert out["audio"].shape == (6000,) and out["length"] == 6000
    assert out["texts"] == ["a tone"] and out["meta"]["labels"] == ["tone"]
    assert abs(float(out["audio"][1000:5000].mean()) - 0.25) < 1e-3


@pytest.mark.parametrize("rate, seconds, pad_mode", [(48000, 2.0, "repeat"), (44100, 2.0, "zero"),
                                                    (48000, 0.5, "repeat"), (16000, 0.5, "zero")])
def test_decoder_writes_the_clip_into_out_as_it_would_return_it(rate, seconds, pad_mode):
    """Decoding into a batch row gives the clip decoding alone gives: long clips resampled in
    place, short ones padded and copied, at the model rate or not."""
    audio = (0.3 * np.random.default_rng(2).standard_normal(int(rate * seconds))).astype(np.float32)
    sample = raw_sample(audio=audio, rate=rate)
    decoder = ClipDecoder(sample_rate=44100, clip_samples=44100, pad_mode=pad_mode, is_train=True)
    alone = decoder(sample, np.random.default_rng(3))
    rows = torch.full((2, 44100), 9.0)
    into = decoder.decode_into(rows[1], sample, np.random.default_rng(3))
    assert into["audio"].data_ptr() == rows[1].data_ptr() and into["length"] == alone["length"]
    torch.testing.assert_close(rows[1], alone["audio"], atol=1e-6, rtol=0)
    assert (rows[0] == 9).all()


@pytest.mark.parametrize("sample, reason", [
    (raw_sample(json_bytes=b"{not json"), "bad_json"),
    (raw_sample(json_bytes=b'["a json list"]'), "bad_json"),
    (raw_sample(json_bytes=b'{"text": "\xff"}'), "bad_json"),  # not utf-8
    (raw_sample(json_bytes=b'{"text": "   "}'), "empty_text"),
    (raw_sample(json_bytes=b'{"source": "x"}'), "empty_text"),
    (raw_sample(text=()), "empty_text"),
    (raw_sample(text=("  ",)), "empty_text"),
    ({"__key__": "x", "json": json.dumps({"text": ["a"]}).encode()}, "missing_audio"),
    (dict(raw_sample(), flac=raw_sample()["flac"][:60]), "bad_audio"),
])
def test_bad_samples_are_skipped_and_counted(sample, reason):
    decoder = ClipDecoder(sample_rate=16000, clip_samples=4000, pad_mode="zero", is_train=True)
    assert decoder(sample, np.random.default_rng(0)) is None
    assert decoder.skipped == {reason: 1}


@pytest.mark.parametrize("is_train", [True, False])
def test_a_plain_string_text_is_one_caption(is_train):
    """LAION-style `"text": "a dog barks"` used to be iterated into single letters."""
    meta = {"text": "a dog barks", "source": "demo", "id": "s", "split": "train", "sample_rate": 16000}
    decoder = ClipDecoder(sample_rate=16000, clip_samples=4000, pad_mode="zero", is_train=is_train)
    out = decoder(raw_sample(json_bytes=json.dumps(meta).encode()), np.random.default_rng(0) if is_train else None)
    assert out["texts"] == ["a dog barks"] and out["caption"] == "a dog barks" and not decoder.skipped
    assert validate_sample_json({**meta, "duration": 0.5}) == []  # `validate` agrees with the loader
    assert validate_sample_json({**meta, "duration": 0.5, "text": " "}) == ["field 'text' is empty"]


@pytest.mark.parametrize("text", [{"en": "a dog"}, 5, 2.5, True, ["a dog", 5], ["a dog", None], [["a dog"]]])
def test_a_text_of_another_type_is_bad_json(text):
    meta = {"text": text, "source": "demo", "id": "s", "split": "train", "sample_rate": 16000}
    for is_train in (True, False):
        decoder = ClipDecoder(sample_rate=16000, clip_samples=4000, pad_mode="zero", is_train=is_train)
        sample = raw_sample(json_bytes=json.dumps(meta).encode())
        assert decoder(sample, np.random.default_rng(0) if is_train else None) is None
        assert decoder.skipped == {"bad_json": 1}


@pytest.mark.parametrize("stated", [8000, 0, "16000", None])
def test_the_audio_header_rate_decides_how_many_frames_to_read(stated):
    """A json `sample_rate` of half the real rate used to read half the frames: a silently short clip."""
    audio = (0.3 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32)  # 2 s at 16 kHz
    honest = raw_sample(audio=audio, rate=16000)
    meta = dict(json.loads(honest["json"]), sample_rate=stated)
    lying = dict(honest, json=json.dumps(meta).encode())
    for is_train in (False, True):
        decoder = ClipDecoder(sample_rate=16000, clip_samples=16000, pad_mode="zero", is_train=is_train)
        rng = np.random.default_rng(4) if is_train else None
        out = decoder(lying, rng)
        assert out["length"] == 16000 and float(out["audio"][-4000:].abs().sum()) > 0
        torch.testing.assert_close(
            out["audio"], decoder(honest, np.random.default_rng(4) if is_train else None)["audio"]
        )


def test_resolve_shards_finds_gzipped_shards(tmp_path):
    """`.tar.gz` shards are read by the loader; resolving them used to say "not found"."""
    import gzip

    split = tmp_path / "split"
    split.mkdir()
    for i, name in enumerate(["a-000000.tar", "a-000001.tar.gz", "a-000002.tgz"]):
        with tarfile.open(split / "plain.tmp", "w"):
            pass
        data = (split / "plain.tmp").read_bytes()
        (split / name).write_bytes(gzip.compress(data) if i else data)
    (split / "plain.tmp").unlink()
    (split / "notes.txt").write_text("not a shard")
    assert [u.rsplit("/", 1)[1] for u in resolve_shards(str(split)).urls] == [
        "a-000000.tar", "a-000001.tar.gz", "a-000002.tgz"]
    assert resolve_shards(str(split / "a-000001.tar.gz")).urls == [str(split / "a-000001.tar.gz")]
    assert resolve_shards(str(split / "a-000002.tgz")).urls == [str(split / "a-000002.tgz")]


def test_resolve_shards_forms(tmp_path):
    split = tmp_path / "demo" / "train"
    split.mkdir(parents=True)
    for i in range(3):
        with tarfile.open(split / f"demo-train-{i:06d}.tar", "w"):
            pass
    assert len(resolve_shards(str(split)).urls) == 3  # no manifest: the directory's tars
    (split / "manifest.json").write_text(json.dumps(
        {"shards": [{"name": f"demo-train-{i:06d}.tar", "count": 5} for i in range(2)]}))
    source = resolve_shards(str(split))
    assert len(source.urls) == 2 and source.num_samples == 10
    brace = resolve_shards(str(split / "demo-train-{000000..000002}.tar"))
    assert len(brace.urls) == 3
    assert resolve_shards("pipe:aws s3 cp s3://b/x-{0..3}.tar -").urls[1] == "pipe:aws s3 cp s3://b/x-1.tar -"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(brace.urls) + "\n")
    assert resolve_shards(str(listing)).urls == brace.urls
    assert len(resolve_shards(f"{split}::{listing}").urls) == 5


def test_resolve_shards_errors(tmp_path):
    with pytest.raises(DataError, match="shard directory not found: .*nope"):
        resolve_shards(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no shards found"):
        resolve_shards(str(tmp_path))
    with pytest.raises(DataError, match="1 of 2 shards"):
        (tmp_path / "a-0.tar").write_bytes(b"")
        resolve_shards(str(tmp_path / "a-{0..1}.tar"))


@pytest.mark.parametrize("text, message", [
    ('{"shards": [', "is not valid json"),
    (b"\xff\xfe{}", "is not valid json"),
    ("[1, 2]", "is not a json object (found list)"),
    ('{"num_samples": 3}', "lacks required keys: shards"),
    ('{"shards": "a.tar"}', "'shards' must be a list, found str"),
    ('{"shards": [{"name": 7}]}', "shards[0] must be a file name or {name, count}"),
    ('{"shards": [{"name": "a.tar", "count": "many"}]}', "shards[0] must be a file name"),
    ('{"shards": ["a.tar"], "num_samples": -1}', "num_samples must be a count"),
    ('{"shards": ["a.tar"], "format": "other/9"}', "has format 'other/9'"),
])
def test_a_damaged_manifest_is_one_data_error(tmp_path, text, message):
    (tmp_path / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError) as err:
        resolve_shards(str(tmp_path))
    assert message in str(err.value) and "manifest.json" in str(err.value) and "\n" not in str(err.value)


class _StackInWorker(torch.utils.data.IterableDataset):
    def __iter__(self):
        clips = [torch.arange(6, dtype=torch.float32) + 10 * i for i in range(3)]
        stacked = stack_for_transfer(clips)
        yield {"audio": stacked, "shared_in_worker": stacked.is_shared(), "expected": torch.stack(clips)}


@pytest.mark.parametrize("workers", [0, 1])
def test_stack_for_transfer_stacks_into_shared_memory_in_workers(workers):
    (batch,) = list(torch.utils.data.DataLoader(_StackInWorker(), batch_size=None, num_workers=workers))
    assert torch.equal(batch["audio"], batch["expected"]) and batch["audio"].shape == (3, 6)
    assert batch["shared_in_worker"] == (workers > 0)  # no detour through private memory in a worker


def test_stack_for_transfer_returns_rows_already_stacked_without_a_copy():
    buffer = torch.arange(24, dtype=torch.float32).view(4, 6)
    stacked = stack_for_transfer([buffer[0], buffer[1], buffer[2]])  # a partial last batch
    assert stacked.data_ptr() == buffer.data_ptr() and torch.equal(stacked, buffer[:3])
    for rows in ([buffer[1], buffer[0]], [buffer[0], buffer[2]], [buffer[0], buffer[0]]):  # out of order, gaps, twice
        copied = stack_for_transfer(rows)
        assert copied.data_ptr() != buffer.data_ptr() and torch.equal(copied, torch.stack(rows))
