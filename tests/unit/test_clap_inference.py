"""CLAP inference API: from_checkpoint, embed_audio (files or waveforms, any rate/channels), embed_text."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from clap_lightning.config import ExperimentConfig, ModelConfig, config_from, to_container
from clap_lightning.errors import CheckpointError
from clap_lightning.models.clap import CLAP

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "model" / "tiny.yaml"


@pytest.fixture(scope="module")
def model() -> CLAP:
    torch.manual_seed(0)
    config = config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(TINY))})
    return CLAP(config.model).train()  # train mode on purpose: embed_* must switch to eval and back


def _tone(rate: int, seconds: float, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(int(freq))
    mono = 0.4 * np.sin(2 * np.pi * freq * t) * np.sin(2 * np.pi * 0.7 * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)  # [T, C]


def test_files_any_rate_and_channels_alone_equals_in_batch(model, tmp_path):
    paths = [tmp_path / "stereo48k.flac", tmp_path / "mono22k.wav", tmp_path / "short8k.ogg"]
    sf.write(paths[0], _tone(48000, 3.0, channels=2), 48000)
    sf.write(paths[1], _tone(22050, 2.5, freq=880.0), 22050)
    sf.write(paths[2], _tone(8000, 0.7, freq=300.0), 8000)  # shorter than the clip: tiled
    batch = model.embed_audio(paths)
    assert batch.shape == (3, model.config.d_proj)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(3))
    for i, path in enumerate(paths):
        torch.testing.assert_close(model.embed_audio(str(path))[0], batch[i], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.embed_audio(paths, batch_size=2), batch, atol=1e-5, rtol=1e-5)
    assert model.training  # mode restored


def test_waveform_input_matches_the_same_audio_from_a_file(model, tmp_path):
    path = tmp_path / "clip.flac"
    sf.write(path, _tone(44100, 3.0, channels=2), 44100)
    decoded, rate = sf.read(path, dtype="float32")  # [T, C] as the file holds it (16-bit)
    from_file = model.embed_audio(path)
    from_wave = model.embed_audio([torch.from_numpy(decoded.T)], sample_rate=rate)  # [C, T]
    torch.testing.assert_close(from_wave, from_file, atol=1e-5, rtol=1e-5)


def test_fixed_crop_from_the_start_is_deterministic(model):
    rate = model.config.sample_rate
    long = _tone(rate, 5.0)[:, 0]
    head = long[: model.config.clip_samples]
    emb_long = model.embed_audio(long)
    torch.testing.assert_close(emb_long, model.embed_audio(head))  # only the first clip_seconds count
    torch.testing.assert_close(emb_long, model.embed_audio(torch.from_numpy(long)))
    batch = torch.from_numpy(np.stack([head, head[::-1].copy()]))  # a batch tensor [N, T]
    assert model.embed_audio(batch).shape == (2, model.config.d_proj)
    with pytest.raises(ValueError, match=r"expected a waveform \[T\], \[channels, T\] or \[T, channels\]"):
        model.embed_audio([np.zeros((2, 2, 10), dtype=np.float32)])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b))


@pytest.mark.parametrize("dtype, scale, offset", [(np.int16, 2**15, 0), (np.int32, 2**31, 0), (np.int8, 2**7, 0),
                                                  (np.uint8, 2**7, 128)])
def test_integer_pcm_is_scaled_to_full_scale(model, dtype, scale, offset):
    """The same tone as float and as PCM integers gives the same embedding (int16 unscaled: cosine -0.86)."""
    tone = _tone(16000, 2.0)[:, 0]
    pcm = np.clip(np.round(tone * scale) + offset, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    as_float = model.embed_audio(tone)
    assert _cosine(model.embed_audio(pcm), as_float) > (0.999 if scale > 2**7 else 0.99)
    torch.testing.assert_close(model.embed_audio(torch.from_numpy(pcm)), model.embed_audio(pcm))
    with pytest.raises(ValueError, match="dtype int64 are ambiguous"):
        model.embed_audio(pcm.astype(np.int64))


def test_stereo_in_soundfiles_layout_is_one_clip(model):
    """[T, 2] as soundfile returns it is one clip, down-mixed (it was T clips of 2 samples)."""
    stereo = _tone(16000, 2.5, channels=2)  # [T, 2]
    emb = model.embed_audio(stereo, sample_rate=16000)
    assert emb.shape == (1, model.config.d_proj)
    torch.testing.assert_close(emb, model.embed_audio(stereo.mean(axis=1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.embed_audio([stereo.T]), emb, atol=1e-6, rtol=0)  # [channels, T] in a list
    torch.testing.assert_close(model.embed_audio([stereo]), emb, atol=1e-6, rtol=0)  # [T, channels] in a list
    batch = np.stack([stereo[:, 0], stereo[:, 1]])  # [2, T] on its own: a batch of two mono clips
    assert model.embed_audio(batch).shape == (2, model.config.d_proj)


def test_bad_samples_and_rates_are_refused(model, tmp_path):
    wave = _tone(16000, 2.0)[:, 0]
    for bad in (np.nan, np.inf, -np.inf):
        damaged = wave.copy()
        damaged[100] = bad
        with pytest.raises(ValueError, match="audio clip 1 holds NaN or Inf samples"):
            model.embed_audio([wave, damaged])
    path = tmp_path / "nan.wav"
    sf.write(path, np.where(np.arange(wave.size) == 5, np.nan, wave).astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav holds NaN or Inf"):
        model.embed_audio(path)
    for rate in (0, -16000, 16000.5, float("nan"), True, "16000"):
        with pytest.raises(ValueError, match="sample_rate must be a positive whole number"):
            model.embed_audio(wave, sample_rate=rate)
    torch.testing.assert_close(model.embed_audio(wave, sample_rate=16000.0), model.embed_audio(wave))


def test_empty_lists_give_empty_results(model):
    assert model.embed_text([]).shape == (0, model.config.d_proj)
    assert model.embed_audio([]).shape == (0, model.config.d_proj)
    assert model.embed_audio([], long_audio="windows").shape == (0, model.config.d_proj)
    with pytest.raises(ValueError, match="caption 1 is a NoneType"):
        model.embed_text(["a dog", None])


def test_embed_text_normalised_and_batch_independent(model):
    captions = ["a loud sine tone", "a dog barks over a soft hum and rain!!", "white noise"]
    batch = model.embed_text(captions)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(3))
    for i, caption in enumerate(captions):
        torch.testing.assert_close(model.embed_text(caption)[0], batch[i], atol=1e-5, rtol=1e-5)
    assert model.training


def test_from_checkpoint_reads_a_lightning_style_checkpoint(model, tmp_path):
    config = config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(TINY))})
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_container(config)}, "epoch": 1}, path)
    loaded = CLAP.from_checkpoint(path)
    assert not loaded.training and isinstance(loaded.config, ModelConfig)
    torch.testing.assert_close(loaded.embed_text(["a low hum"]), model.embed_text(["a low hum"]))
    wave = _tone(16000, 2.0)[:, 0]
    torch.testing.assert_close(loaded.embed_audio(wave), model.embed_audio(wave))


def test_from_checkpoint_errors(model, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        CLAP.from_checkpoint(tmp_path / "none.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="not a clap-lightning checkpoint"):
        CLAP.from_checkpoint(tmp_path / "bare.ckpt")
    config = config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(TINY))})
    state = {f"model.{k}": v for k, v in model.state_dict().items() if "text_projection" not in k}
    torch.save({"state_dict": state, "hyper_parameters": {"config": to_container(config)}}, tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match="does not match its stored architecture"):
        CLAP.from_checkpoint(tmp_path / "cut.ckpt")


def test_odd_sample_rates_take_bounded_time_and_memory(tmp_path):
    """3 s at 16,001 and at 48,001 Hz (rates that do not reduce against the model's) through
    every path that resamples: each under 1 s and 200 MB, where the dense kernel took 8.8 GB.
    Measured in a subprocess, whose peak RSS is this work's alone (see tests/odd_rate_costs.py)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "odd_rate_costs.py"), str(TINY), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.splitlines()[-1])
    assert len(figures) == 10  # embed_audio (waveform, file), loader, shard writer, Resampler; two rates
    for name, (seconds, peak_bytes) in figures.items():
        assert seconds < 1.0 and peak_bytes < 200 * 2**20, (name, seconds, peak_bytes)


def test_every_embedding_path_leaves_a_frozen_tower_frozen(model):
    """One `eval_mode`: eval inside, each submodule's own mode after. `model.train(was_training)`
    switched a frozen tower (kept in eval mode by ClapPretraining) back to train mode."""
    from clap_lightning.eval.embed import embed_batches
    from clap_lightning.eval.zeroshot import embed_texts
    from clap_lightning.models.clap import embed_clips

    seen = []
    hooks = [tower.register_forward_pre_hook(lambda module, args: seen.append((model.training, module.training)))
             for tower in (model.audio_encoder, model.text_encoder)]
    wave = torch.from_numpy(_tone(16000, 2.04)[:, 0])
    batch = {"audio": wave[None], "audio_length": torch.tensor([len(wave)]), "key": ["k"], "meta": [{}]}
    paths = {
        "embed_audio": lambda: model.embed_audio(wave),
        "embed_text": lambda: model.embed_text(["a tone"]),
        "embed_clips": lambda: embed_clips(model, wave[None], torch.tensor([len(wave)])),
        "eval suite": lambda: embed_batches(model, [batch]),
        "eval prompts": lambda: embed_texts(model, model.build_tokenizer(), ["a tone"]),
    }
    try:
        model.text_encoder.eval()  # frozen, in a model that trains
        for name, embed in paths.items():
            seen.clear()
            embed()
            assert seen and not any(flag for pair in seen for flag in pair), name  # all in eval mode inside
            assert model.training and model.audio_encoder.training, name
            assert not model.text_encoder.training and not any(m.training for m in model.text_encoder.modules()), name
    finally:
        for hook in hooks:
            hook.remove()
        model.train()

