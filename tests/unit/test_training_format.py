"""Training-format shards: `python -m data_recipes prepare` and the log-mel decoder."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clap_lightning.audio.frontend import SILENCE_DB, LogMelFrontEnd, frames_for, frontend_differences
from clap_lightning.data import schema
from clap_lightning.data.pipeline import LogMelDecoder
from clap_lightning.data.stream import read_tar_samples
from data_recipes import cli, prepare, writer
from data_recipes.base import RecipeError
from tests.unit.test_writer import ToyConfig, ToyRecipe, build

FRONTEND = {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 16, "fmin": 0.0, "fmax": 4000.0,
            "mel_sample_rate": 8000}


def model_yaml(path: Path, **changes) -> Path:
    encoder = "\n".join(f"  {k}: {v}" for k, v in {**FRONTEND, **changes}.items())
    path.write_text(f"sample_rate: 8000\nclip_seconds: 0.05\naudio_encoder:\n  name: htsat\n{encoder}\n")
    return path


def archival(tmp_path: Path, **config) -> Path:
    build(tmp_path / "arch", ToyRecipe(ToyConfig(**config)) if config else None)
    return schema.split_dir(tmp_path / "arch", "toy", "train")


def members(directory: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(directory.glob("*.tar")):
        for sample in read_tar_samples(str(path), Counter()):
            out[sample["__key__"]] = sample
    return out


def test_logmel_prepare_matches_the_models_front_end(tmp_path):
    src = archival(tmp_path)
    [manifest] = prepare.prepare(src, tmp_path / "mel", "logmel", model_yaml(tmp_path / "m.yaml"), show_progress=False)
    out = schema.split_dir(tmp_path / "mel", "toy", "train")
    switches = {"mel_scale": "slaney", "quantize_int16": False}
    assert manifest["build"]["format"] == "logmel" and manifest["build"]["frontend"] == {**FRONTEND, **switches}
    assert schema.read_manifest(out) == manifest and manifest["num_samples"] == 10 and manifest["skipped"] == {}
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in src.glob("*.tar"))
    front = LogMelFrontEnd(256, 80, 16, 0.0, 4000.0, 8000)
    archived, prepared = members(src), members(out)
    assert sorted(prepared) == sorted(archived)
    for key, sample in prepared.items():
        assert set(sample) - {"__key__", "__url__"} == {"logmel.npy", "json"}
        feats = np.load(io.BytesIO(sample["logmel.npy"]))
        wave, _ = sf.read(io.BytesIO(archived[key]["flac"]), dtype="float32")
        expected = front(torch.from_numpy(wave)[None])[0].numpy()
        assert feats.dtype == np.float16 and feats.shape == (frames_for(len(wave), 80), 16)
        np.testing.assert_allclose(feats.astype(np.float32), expected, atol=0.05, rtol=1e-3)  # fp16 rounding
        assert sample["json"] == archived[key]["json"]


def test_pcm16_prepare_keeps_the_samples(tmp_path):
    src = archival(tmp_path)
    prepare.prepare(src, tmp_path / "pcm", "pcm16", model_yaml(tmp_path / "m.yaml"), show_progress=False)
    archived, prepared = members(src), members(schema.split_dir(tmp_path / "pcm", "toy", "train"))
    for key, sample in prepared.items():
        pcm, rate = sf.read(io.BytesIO(sample["wav"]), dtype="int16")
        flac, _ = sf.read(io.BytesIO(archived[key]["flac"]), dtype="int16")
        assert rate == 8000
        np.testing.assert_array_equal(pcm, flac)


def test_prepare_resamples_to_the_model_rate(tmp_path):
    src = archival(tmp_path)  # 8 kHz archival clips
    yaml = model_yaml(tmp_path / "m.yaml", sample_rate=16000, mel_sample_rate=16000, fmax=8000.0)
    [manifest] = prepare.prepare(src, tmp_path / "mel", "logmel", yaml, show_progress=False)
    prepared = members(schema.split_dir(tmp_path / "mel", "toy", "train"))
    sample = prepared["toy-clip003"]
    assert json.loads(sample["json"])["sample_rate"] == 16000 and manifest["build"]["sample_rate"] == 16000
    assert np.load(io.BytesIO(sample["logmel.npy"])).shape[0] == frames_for(2 * (800 + 30), 80)


def test_prepare_resumes_and_refuses_another_front_end(tmp_path):
    src, yaml = archival(tmp_path), model_yaml(tmp_path / "m.yaml")
    prepare.prepare(src, tmp_path / "mel", "logmel", yaml, show_progress=False)
    out = schema.split_dir(tmp_path / "mel", "toy", "train")
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    (out / "toy-train-000001.tar").unlink()
    (out / "toy-train-000002.tar").rename(out / "toy-train-000002.tar.tmp")  # killed mid-shard
    kept = (out / "toy-train-000000.tar").stat().st_mtime_ns
    [manifest] = prepare.prepare(src, tmp_path / "mel", "logmel", yaml, show_progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before and manifest["num_samples"] == 10
    assert (out / "toy-train-000000.tar").stat().st_mtime_ns == kept  # complete shards are not rewritten
    with pytest.raises(RecipeError, match="n_mels"):
        prepare.prepare(src, tmp_path / "mel", "logmel", model_yaml(tmp_path / "other.yaml", n_mels=32),
                        show_progress=False)


def test_prepare_parts_merge_and_workers(tmp_path):
    src, yaml = archival(tmp_path), model_yaml(tmp_path / "m.yaml")
    for i in range(2):
        [m] = prepare.prepare(src, tmp_path / "mel", "logmel", yaml, part=(i, 2), workers=2, show_progress=False)
        assert m["part"] == {"index": i, "count": 2}
    merged = writer.merge_parts(tmp_path / "mel", "toy", "train")
    assert merged["num_samples"] == 10 and merged["build"]["format"] == "logmel"
    [whole] = prepare.prepare(src, tmp_path / "whole", "logmel", yaml, show_progress=False)
    assert [s["samples"] for s in merged["shards"]] == [s["samples"] for s in whole["shards"]]


def test_prepare_counts_bad_clips_and_damaged_shards(tmp_path):
    src = archival(tmp_path)
    shard = src / "toy-train-000000.tar"
    with tarfile.open(shard) as tar:
        entries = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    entries[0] = (entries[0][0], b"not flac at all")  # the first clip's audio
    with tarfile.open(shard, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    last = src / "toy-train-000002.tar"
    last.write_bytes(last.read_bytes()[:700])  # cut inside the first member's data
    [manifest] = prepare.prepare(src, tmp_path / "mel", "logmel", model_yaml(tmp_path / "m.yaml"), show_progress=False)
    assert manifest["skipped"] == {"bad_audio": 1, "bad_tar": 1}
    assert manifest["num_samples"] == 7  # 3 + 4 + none of the truncated shard's 2


def test_prepare_cli(tmp_path, capsys):
    src, yaml = archival(tmp_path), model_yaml(tmp_path / "m.yaml")
    assert cli.main(["prepare", str(src), "--out", str(tmp_path / "mel"), "--model-config", str(yaml),
                     "--no-progress"]) == 0
    assert "toy/train -> logmel: 10 clips" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("audio_encoder:\n  name: htsat\n  n_fft: 256\n")
    assert cli.main(["prepare", str(src), "--out", str(tmp_path / "x"), "--model-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "sample_rate" in err[0]
    # prepared shards are not archival ones
    assert cli.main(["prepare", str(tmp_path / "mel"), "--out", str(tmp_path / "y"), "--model-config", str(yaml)]) == 2
    assert "prepared shards" in capsys.readouterr().err


def test_frontend_differences_name_the_parameter():
    assert frontend_differences(FRONTEND, FRONTEND) == []
    assert frontend_differences({**FRONTEND, "hop_length": 160}, FRONTEND) == ["hop_length 160 (model: 80)"]
    assert frontend_differences({k: v for k, v in FRONTEND.items() if k != "fmax"}, FRONTEND) == [
        "fmax None (model: 4000.0)"]


def _sample(feats: np.ndarray, key: str = "k") -> dict:
    return {
        "__key__": key,
        "json": json.dumps({"text": ["a", "b"]}).encode(),
        "logmel.npy": prepare.encode_logmel(feats),
    }


def test_logmel_decoder_crops_in_frames():
    feats = np.arange(100 * 4, dtype=np.float32).reshape(100, 4) / 8
    decoder = LogMelDecoder(40, 4, "repeat", is_train=True)
    starts = set()
    for seed in range(8):
        out = decoder(_sample(feats), np.random.default_rng(seed))
        start = int(out["logmel"][0, 0] * 2)
        np.testing.assert_array_equal(out["logmel"].numpy(), feats[start:start + 40])
        assert out["length"] == 40 and out["logmel"].dtype == torch.float32
        starts.add(start)
    assert len(starts) > 1  # random crops
    evaluation = LogMelDecoder(40, 4, "repeat", is_train=False)(_sample(feats))
    np.testing.assert_array_equal(evaluation["logmel"].numpy(), feats[:40])


def test_logmel_decoder_pads_short_clips_into_the_buffer():
    feats = np.ones((15, 4), dtype=np.float32)
    feats[:, 0] = np.arange(15)
    buffer = torch.full((2, 40, 4), 7.0)
    tiled = LogMelDecoder(40, 4, "repeat", is_train=True).decode_into(
        buffer[0], _sample(feats), np.random.default_rng(0)
    )
    assert tiled["logmel"].data_ptr() == buffer[0].data_ptr() and tiled["length"] == 40
    np.testing.assert_array_equal(buffer[0, :, 0].numpy(), np.arange(40) % 15)
    zero = LogMelDecoder(40, 4, "zero", is_train=True).decode_into(buffer[1], _sample(feats), np.random.default_rng(0))
    assert zero["length"] == 15
    assert (buffer[1, 15:] == SILENCE_DB).all() and (buffer[1, :15, 1] == 1).all()


def test_logmel_decoder_counts_bad_members():
    decoder = LogMelDecoder(10, 4, "repeat", is_train=False)
    wrong_bins = _sample(np.zeros((20, 8), dtype=np.float16), "bins")
    garbage = dict(_sample(np.zeros((20, 4))), **{"logmel.npy": b"garbage"})
    nan = np.zeros((20, 4), dtype=np.float16)
    nan[3, 1] = np.nan
    missing = {"__key__": "m", "json": b'{"text": ["a"]}'}
    for sample in (wrong_bins, garbage, _sample(nan, "nan"), missing, _sample(np.zeros((0, 4)), "empty")):
        assert decoder(sample) is None
    assert decoder.skipped == Counter(bad_audio=2, nan_audio=1, missing_audio=1, empty_audio=1)


# --- the loader and the model on log-mel shards (the tiny model: 16 kHz, 2.04 s, 256 frames of 64 bins)

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"
DEMO = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "demo.yaml"


def tiny_yaml(path: Path, **changes) -> Path:
    import yaml

    config = yaml.safe_load(TINY.read_text())
    config["audio_encoder"].update(changes)
    path.write_text(yaml.safe_dump(config))
    return path


def datamodule(train: str, *overrides: str):
    from clap_lightning.config import ExperimentConfig, load_config
    from clap_lightning.lit.datamodule import ClapDataModule

    config = load_config(ExperimentConfig, DEMO, [f"data.train={train}", "data.val=''", "data.num_workers=0",
                                                  "data.global_batch_size=4", "data.shuffle_buffer=0", *overrides])
    module = ClapDataModule.for_pretraining(config)
    module.setup()
    return config, module


def test_loader_yields_logmel_batches_the_model_embeds(tmp_path, monkeypatch):
    from clap_lightning.lit.pretraining import ClapPretraining

    [manifest] = prepare.prepare(archival(tmp_path), tmp_path / "mel", "logmel", TINY, show_progress=False)
    config, module = datamodule(str(schema.split_dir(tmp_path / "mel", "toy", "train")))
    batch = next(iter(module.train_dataloader()))
    assert "audio" not in batch and batch["logmel"].shape == (4, 256, 64) and batch["logmel"].dtype == torch.float32
    assert batch["logmel_length"].tolist() == [256] * 4  # short clips tiled (data.pad_mode repeat)
    assert batch["input_ids"].shape[0] == 4
    lit = ClapPretraining(config)

    def no_front_end(wave):
        raise AssertionError("the model's front end ran on log-mel shards")

    monkeypatch.setattr(lit.model.audio_encoder.frontend, "forward", no_front_end)
    audio_emb, text_emb, _ = lit(batch)
    assert audio_emb.shape == text_emb.shape == (4, 128) and torch.isfinite(audio_emb).all()
    # the audio tower trains from features (a plain sum has no gradient through the projection's LayerNorm)
    (audio_emb * torch.randn(audio_emb.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert lit.model.audio_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert lit.model.audio_encoder.bn0.weight.grad.abs().sum() > 0  # bn0 still applies to the features


def test_features_give_the_waveform_paths_embedding():
    from clap_lightning.config import ExperimentConfig, load_config
    from clap_lightning.models.clap import CLAP

    model = CLAP(load_config(ExperimentConfig, DEMO).model).eval()
    wave = torch.randn(2, 32640) * 0.1
    feats = torch.from_numpy(prepare.SampleConverter("logmel", prepare.read_frontend(TINY)).logmel(wave[0].numpy()))
    with torch.no_grad():
        expected = model.encode_audio(wave[:1])
        got = model.encode_audio_features(feats[None])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_loader_refuses_features_of_another_front_end(tmp_path):
    from clap_lightning.errors import DataError

    prepare.prepare(archival(tmp_path), tmp_path / "mel", "logmel", tiny_yaml(tmp_path / "m.yaml", fmax=7000.0),
                    show_progress=False)
    split = str(schema.split_dir(tmp_path / "mel", "toy", "train"))
    _, module = datamodule(split)
    with pytest.raises(DataError) as err:
        module.train_dataloader()
    message = str(err.value)
    assert "fmax 7000.0 (model: 8000.0)" in message and len(message.splitlines()) == 1
    assert not any(f"{name} " in message for name in ("n_mels", "hop_length", "n_fft", "mel_sample_rate"))
    # waveform augmentations cannot run on features
    prepare.prepare(archival(tmp_path), tmp_path / "ok", "logmel", TINY, show_progress=False)
    _, module = datamodule(str(schema.split_dir(tmp_path / "ok", "toy", "train")), "data.augment.gain_prob=0.5")
    with pytest.raises(DataError, match="data.augment"):
        module.train_dataloader()
    # nor can one run mix features and waveforms
    both = f"{schema.split_dir(tmp_path / 'ok', 'toy', 'train')}::{schema.split_dir(tmp_path / 'arch', 'toy', 'train')}"
    _, module = datamodule(both)
    with pytest.raises(DataError, match="mixes log-mel and waveform"):
        module.train_dataloader()


def test_prepare_array_script_then_merge_match_one_process(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    src, yaml = archival(tmp_path), model_yaml(tmp_path / "m.yaml")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(root), SLURM_ARRAY_TASK_COUNT="2",
               SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="1", SLURM_CPUS_PER_TASK="1")
    for task in ("0", "1"):
        done = subprocess.run(["bash", str(root / "slurm" / "prepare_shards.sbatch"), str(src), str(tmp_path / "arr"),
                               "--model-config", str(yaml)], env=dict(env, SLURM_ARRAY_TASK_ID=task), cwd=root,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    merged = subprocess.run(["bash", str(root / "slurm" / "merge_shards.sbatch"), "toy", str(tmp_path / "arr")],
                            env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr
    [whole] = prepare.prepare(src, tmp_path / "one", "logmel", yaml, show_progress=False)
    arr, one = schema.split_dir(tmp_path / "arr", "toy", "train"), schema.split_dir(tmp_path / "one", "toy", "train")
    assert {p.name: p.read_bytes() for p in arr.glob("*.tar")} == {p.name: p.read_bytes() for p in one.glob("*.tar")}
    assert schema.read_manifest(arr)["shards"] == whole["shards"]


@pytest.mark.parametrize("fmt,rate", [("logmel", 8000), ("pcm16", 8000), ("logmel", 16000), ("pcm16", 16000)])
def test_validate_checks_prepared_splits(tmp_path, fmt, rate):
    from data_recipes import checks

    src = archival(tmp_path)
    yaml = model_yaml(tmp_path / "m.yaml", sample_rate=rate, mel_sample_rate=rate, fmax=rate / 2)
    prepare.prepare(src, tmp_path / "p", fmt, yaml, show_progress=False)
    out = schema.split_dir(tmp_path / "p", "toy", "train")
    report = checks.validate_split(out)
    assert report.problems == [] and report.samples == 10
    if fmt == "logmel":  # a member cut to half its frames is reported
        shard = out / "toy-train-000000.tar"
        with tarfile.open(shard) as tar:
            entries = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        feats = np.load(io.BytesIO(entries[0][1]))
        entries[0] = (entries[0][0], prepare.encode_logmel(feats[: len(feats) // 2]))
        with tarfile.open(shard, "w") as tar:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        [problem] = checks.validate_split(out).problems
        assert "toy-clip000" in problem and "frames" in problem
