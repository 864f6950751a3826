"""Long audio (windows), the `embed` index (folders, lists, csv, shards; bad files; resume; kill -9) and `search`."""

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from clap_lightning.cli import main
from clap_lightning.config import ExperimentConfig, config_from, to_container
from clap_lightning.eval.index import IndexSettings, build_index, bundle, load_index, search_index, unbundle
from clap_lightning.models.clap import CLAP
from tests.shard_factory import write_good_shards

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "model" / "tiny.yaml"
RATE = 16000


@pytest.fixture(scope="module")
def model() -> CLAP:
    torch.manual_seed(0)
    return CLAP(config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(TINY))}).model).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    config = config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(TINY))})
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_container(config)}}, path)
    return path


def sound(seconds: float, freq: float, seed: int) -> np.ndarray:
    """A chirpy tone burst train: clearly not the background noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    burst = (np.sin(2 * np.pi * 7 * t) > 0).astype(np.float32)
    return (0.5 * np.sin(2 * np.pi * (freq + 300 * t) * t) * burst).astype(np.float32)


def background(seconds: float, seed: int) -> np.ndarray:
    return (0.01 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def test_windows_cover_a_long_file_find_the_sound_and_ignore_batch_size(model, tmp_path):
    recording = background(60.0, seed=1)
    event = sound(1.5, 900.0, seed=2)
    at = int(40.0 * RATE)
    recording[at:at + len(event)] += event
    path = tmp_path / "long.wav"
    sf.write(path, recording, RATE)

    out = model.embed_audio(path, long_audio="windows", hop_seconds=1.0, return_windows=True, batch_size=7)
    times = out.times[0]
    clip = model.config.clip_seconds
    expected_starts = [float(s) for s in np.arange(0.0, 60.0 - clip, 1.0)] + [60.0 - clip]
    np.testing.assert_allclose(times[:, 0].numpy(), expected_starts, atol=1 / RATE)
    np.testing.assert_allclose((times[:, 1] - times[:, 0]).numpy(), clip, atol=1e-9)
    assert out.windows[0].shape == (len(expected_starts), model.config.d_proj)

    query = model.embed_audio(np.concatenate([event, background(0.6, seed=3)]))[0]  # the event alone
    best = int(torch.argmax(out.windows[0] @ query))
    start, end = times[best].tolist()
    assert start <= 40.0 + 0.5 and end >= 40.0 + 1.0, f"best window {start:.2f}-{end:.2f} s misses the event at 40 s"

    again = model.embed_audio([path], long_audio="windows", hop_seconds=1.0, batch_size=64)
    torch.testing.assert_close(again, out.embedding, atol=1e-5, rtol=0)
    pooled = torch.nn.functional.normalize(out.windows[0].mean(0), dim=-1)
    torch.testing.assert_close(out.embedding[0], pooled)
    first = model.embed_audio(path)  # default: the first clip_seconds, unchanged
    torch.testing.assert_close(first[0], out.windows[0][0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="long_audio"):
        model.embed_audio(path, long_audio="fusion")


def write_library(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / ("sub" if i % 3 else "") / f"clip{i:03d}.{'flac' if i % 2 else 'wav'}"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, sound(1.0 + (i % 4), 300.0 + 40 * i, seed=i), RATE)
        paths.append(path)
    return paths


def read_table(out: Path) -> list[dict]:
    rows = []
    for table in sorted(out.glob("part-[0-9]*[0-9].csv")):
        with table.open() as f:
            rows += list(csv.DictReader(f))
    return rows


def test_embed_folder_skips_bad_files_and_matches_embed_audio(model, tmp_path):
    paths = write_library(tmp_path / "lib", 11)
    (tmp_path / "lib" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    settings = IndexSettings(str(tmp_path / "lib"), "unused.ckpt", "first", 1.0, part_size=4)
    summary = build_index(model, settings, tmp_path / "index", batch_size=5, num_workers=2, progress=False)
    assert (summary.clips, summary.bad, summary.parts_skipped) == (11, 1, 0)
    index = load_index(tmp_path / "index")
    assert sorted(r["path"] for r in index.rows) == sorted(str(p) for p in paths)
    by_path = {r["path"]: i for i, r in enumerate(index.rows)}
    direct = model.embed_audio(paths)
    got = index.embeddings[[by_path[str(p)] for p in paths]]
    torch.testing.assert_close(got, direct, atol=1e-5, rtol=0)
    bad = [line for f in (tmp_path / "index").glob("*.bad.csv") for line in f.read_text().splitlines()[1:]]
    assert len(bad) == 1 and "broken.wav" in bad[0]
    durations = {r["path"]: float(r["duration"]) for r in index.rows}
    assert durations[str(paths[3])] == pytest.approx(4.0, abs=1e-3)

    hits = search_index(index, direct[5], k=3)
    assert hits[0].path == str(paths[5]) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_resume_redoes_only_missing_parts_and_refuses_other_settings(model, tmp_path):
    write_library(tmp_path / "lib", 9)
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p.relative_to(tmp_path)) for p in sorted((tmp_path / "lib").rglob("*.*"))))
    settings = IndexSettings(str(listing), "unused.ckpt", "windows", 0.5, part_size=4)
    build_index(model, settings, tmp_path / "index", batch_size=8, num_workers=0, progress=False)
    before = load_index(tmp_path / "index")
    (tmp_path / "index" / "part-000001.csv").unlink()  # as if killed while writing part 1
    summary = build_index(model, settings, tmp_path / "index", batch_size=3, num_workers=1, progress=False)
    assert summary.parts_skipped == 2 and summary.clips == 4
    after = load_index(tmp_path / "index")
    assert [r["id"] for r in after.rows] == [r["id"] for r in before.rows] and len(after.rows) == 9
    torch.testing.assert_close(after.embeddings, before.embeddings, atol=1e-5, rtol=0)
    assert after.window_embeddings.shape[0] == sum(int(r["windows"]) for r in after.rows) > 9
    hit = search_index(after, after.window_embeddings[3], k=1)[0]
    assert hit.start is not None and hit.end - hit.start == pytest.approx(model.config.clip_seconds, abs=1e-3)

    other = IndexSettings(str(listing), "unused.ckpt", "first", 0.5, part_size=4)
    with pytest.raises(Exception, match="long_audio 'windows' -> 'first'"):
        build_index(model, other, tmp_path / "index", progress=False)


def test_shards_and_csv_inputs(model, tmp_path):
    write_good_shards(tmp_path / "shards", "src", n_shards=2, per_shard=3)
    build_index(model, IndexSettings(str(tmp_path / "shards"), "c", "first", 1.0, 100), tmp_path / "a",
                num_workers=2, progress=False)
    index = load_index(tmp_path / "a")
    assert sorted(r["id"] for r in index.rows) == sorted(f"src-{s}-{i}" for s in range(2) for i in range(3))
    paths = write_library(tmp_path / "lib", 3)
    table = tmp_path / "meta.csv"
    table.write_text("id,path\n" + "".join(f"x{i},{p.relative_to(tmp_path)}\n" for i, p in enumerate(paths)))
    build_index(model, IndexSettings(str(table), "c", "first", 1.0, 100), tmp_path / "b", num_workers=0,
                progress=False)
    assert [r["id"] for r in load_index(tmp_path / "b").rows] == ["x0", "x1", "x2"]


def test_cli_embed_kill9_then_resume_gives_every_row_once_and_search_prints(checkpoint, tmp_path, capsys):
    write_library(tmp_path / "lib", 40)
    out = tmp_path / "index"
    command = [sys.executable, "-m", "clap_lightning.cli", "embed", str(tmp_path / "lib"), "--checkpoint",
               str(checkpoint), "--out", str(out), "--part-size", "2", "--num-workers", "1", "--batch-size", "2",
               "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(list(out.glob("part-*[0-9].csv"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("part-*[0-9].csv")))
    assert 2 <= done_before < 20

    assert main(["embed", str(tmp_path / "lib"), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--part-size", "2", "--num-workers", "0", "--no-progress", "--device", "cpu"]) == 0
    rows = read_table(out)
    assert len(rows) == 40 and len({r["path"] for r in rows}) == 40
    assert f"embedded {40 - 2 * done_before} clips" in capsys.readouterr().out  # only the parts not yet written

    assert main(["search", "--index", str(out), "a rising tone", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(str(tmp_path / "lib") in line for line in lines)
    scores = [float(line.split()[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)

    queries = tmp_path / "q.txt"
    queries.write_text("a dog barks\n\nrain on a roof\n")
    assert main(["embed", "--text", str(queries), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "t")]) == 0
    assert np.load(tmp_path / "t" / "text.npy").shape == (2, 128)
    assert main(["search", "--index", str(tmp_path / "nothing"), "x"]) == 2


def test_eval_loader_windows_equal_embed_audio_windows(model, tmp_path):
    from clap_lightning.eval.embed import ClipSettings, build_eval_loader, embed_batches
    from tests.shard_factory import encode, meta_json, write_tar

    waves = [sound(seconds, 300.0 + 100 * i, seed=i) for i, seconds in enumerate((5.3, 1.2, 9.0))]
    flacs = [encode(w, RATE) for w in waves]
    members = [m for i, data in enumerate(flacs) for m in ((f"k{i}.flac", data), (f"k{i}.json", meta_json(f"k{i}")))]
    url = str(write_tar(tmp_path / "long-000000.tar", members))
    settings = ClipSettings(RATE, model.config.clip_samples, model.pad_mode, long_audio="windows", hop_seconds=0.75)
    split = embed_batches(model, build_eval_loader([url], settings, batch_size=2, num_workers=0))
    assert split.keys == ["k0", "k1", "k2"]
    decoded = [torch.from_numpy(sf.read(io.BytesIO(data), dtype="float32")[0]) for data in flacs]  # 16-bit, as stored
    want = model.embed_audio(decoded, sample_rate=RATE, long_audio="windows", hop_seconds=0.75)
    torch.testing.assert_close(split.audio_emb, want, atol=1e-4, rtol=0)
    first = embed_batches(
        model, build_eval_loader([url], ClipSettings(RATE, model.config.clip_samples, model.pad_mode), 3, 0)
    )
    assert not torch.allclose(first.audio_emb[0], split.audio_emb[0], atol=1e-3)  # 5.3 s: windows see more
    with pytest.raises(Exception, match="long_audio"):
        ClipSettings(RATE, 100, long_audio="fusion")


def test_bundles_carry_each_files_windows_and_errors_in_order():
    records = [{"part": 0, "id": "a", "path": "a", "duration": 9.0, "clips": torch.full((3, 4), 1.0),
                "lengths": torch.tensor([4, 4, 2]), "starts": torch.tensor([0.0, 1.0, 2.0])},
               {"part": 0, "id": "bad", "path": "bad", "error": "RuntimeError: not audio"},
               {"part": 0, "id": "b", "path": "b", "duration": 1.0, "clips": torch.full((1, 4), 2.0),
                "lengths": torch.tensor([3]), "starts": torch.tensor([0.0])},
               {"part": 0, "end": True}]
    expected = [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in r.items()} for r in records]
    bundled = bundle(records)
    assert bundled["clips"].shape == (4, 4)  # one tensor per field for the whole bundle
    out = list(unbundle(bundled))
    assert [r.keys() for r in out] == [r.keys() for r in expected]
    for got, want in zip(out, expected):
        for key, value in want.items():
            assert torch.equal(got[key], value) if torch.is_tensor(value) else got[key] == value
