"""Hugging Face ClapModel in and out: a random small ClapModel converts to ours with the same embeddings, and back."""

import json

import pytest
import torch
from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

from clap_lightning.cli import main
from clap_lightning.convert.hf import build_from_hf, hf_to_ours_key, ours_to_hf_key
from clap_lightning.export.hf import export_hf, save_pretrained
from clap_lightning.errors import CheckpointError
from clap_lightning.models.clap import CLAP

FRAMES = 251  # shorter than the 256-frame image: the time stretch is exercised


def small_clap_config(fusion: bool = False) -> ClapConfig:
    audio = ClapAudioConfig(window_size=4, num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=[4, 4],
                            depths=[2, 2], num_attention_heads=[2, 4], patch_embeds_hidden_size=16, hidden_size=32,
                            projection_dim=24, enable_fusion=fusion, num_classes=10, drop_path_rate=0.0,
                            hidden_dropout_prob=0.0)
    text = ClapTextConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=48, max_position_embeddings=40, projection_dim=24)
    return ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=24)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, tokenizer_dir):
    torch.manual_seed(0)
    model = ClapModel(small_clap_config()).eval()
    with torch.no_grad():  # trained-looking statistics, so bn0 is not the identity
        model.audio_model.audio_encoder.batch_norm.running_mean.normal_(-30, 5)
        model.audio_model.audio_encoder.batch_norm.running_var.uniform_(50, 150)
        model.logit_scale_t.fill_(2.0)
    folder = tmp_path_factory.mktemp("hf") / "clap-small"
    model.save_pretrained(folder)
    return folder, model


def hf_inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    mel = -40 + 15 * torch.randn(3, 1, FRAMES, 16, generator=generator)  # ClapFeatureExtractor's [B, 1, T, mels]
    ids = torch.randint(3, 120, (3, 9), generator=generator)
    ids[:, 0] = 0  # <s>
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 1  # RoBERTa's pad id
    return mel, ids, mask


def our_outputs(model: CLAP, mel, ids, mask):
    with torch.no_grad():
        audio = torch.nn.functional.normalize(model.encode_audio_features(mel[:, 0]), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(ids, mask), dim=-1)
    return audio, text


def hf_outputs(model: ClapModel, mel, ids, mask):
    with torch.no_grad():
        return (model.get_audio_features(input_features=mel).pooler_output,
                model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output)


def test_converted_model_matches_transformers(hf_folder, tokenizer_dir):
    folder, hf_model = hf_folder
    ours, config, kept = build_from_hf(folder, tokenizer=tokenizer_dir)
    assert kept == ["head", "tscam_conv"]
    inputs = hf_inputs()
    for got, want in zip(our_outputs(ours, *inputs), hf_outputs(hf_model, *inputs)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert ours.logit_scale.item() == pytest.approx(hf_model.logit_scale_a.item())
    assert ours.logit_scale_t.item() == pytest.approx(2.0)
    assert config.model.projection == "mlp" and config.model.text_encoder["pooling"] == "pooler"


def test_export_loads_back_into_clapmodel_with_the_same_outputs(hf_folder, tokenizer_dir, tmp_path):
    folder, hf_model = hf_folder
    ours, _, _ = build_from_hf(folder, tokenizer=tokenizer_dir)
    out = export_hf(ours, tmp_path / "export")
    reloaded = ClapModel.from_pretrained(out).eval()
    inputs = hf_inputs(seed=2)
    for got, want in zip(hf_outputs(reloaded, *inputs), hf_outputs(hf_model, *inputs)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert json.loads((out / "preprocessor_config.json").read_text())["sampling_rate"] == 48000
    assert (out / "tokenizer.json").is_file() or (out / "vocab.json").is_file()


def test_key_maps_are_inverse_and_refusals_name_the_difference(hf_folder, tokenizer_dir, tmp_path):
    folder, hf_model = hf_folder
    for key in hf_model.state_dict():
        ours = hf_to_ours_key(key)
        if ours is not None:
            assert ours_to_hf_key(ours) == key
    channel_map = small_clap_config(fusion=True)
    channel_map.audio_config.fusion_type = "channel_map"
    ClapModel(channel_map).save_pretrained(tmp_path / "channel_map")
    with pytest.raises(CheckpointError, match="channel_map"):
        build_from_hf(tmp_path / "channel_map", tokenizer=tokenizer_dir)
    assert main(["convert", "hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.ckpt")]) == 2


def test_cli_convert_then_export_roundtrip(hf_folder, tokenizer_dir, tmp_path, capsys):
    folder, hf_model = hf_folder
    ckpt = tmp_path / "small.ckpt"
    assert main(["convert", "hf", str(folder), "--out", str(ckpt), "--tokenizer", tokenizer_dir]) == 0
    assert "tscam_conv" in capsys.readouterr().out  # reported as kept at initial values
    assert main(["export", "hf", str(ckpt), "--out", str(tmp_path / "again")]) == 0
    reloaded = ClapModel.from_pretrained(tmp_path / "again").eval()
    inputs = hf_inputs(seed=3)
    for got, want in zip(hf_outputs(reloaded, *inputs), hf_outputs(hf_model, *inputs)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    loaded = CLAP.from_pretrained(tmp_path / "again", tokenizer=tokenizer_dir)
    for got, want in zip(our_outputs(loaded, *inputs), hf_outputs(hf_model, *inputs)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_gpt2_model_is_refused_by_name_and_saved_in_our_layout(tmp_path):
    from omegaconf import OmegaConf

    from clap_lightning.config import ExperimentConfig, config_from
    from tests.unit.test_export_onnx import MODELS

    torch.manual_seed(0)
    model = CLAP(
        config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(MODELS / "tiny.yaml"))}).model
    ).eval()
    with pytest.raises(CheckpointError, match="text encoder is 'gpt2'.*export safetensors"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    out = save_pretrained(model, tmp_path / "own")
    loaded = CLAP.from_pretrained(out)
    wave = 0.1 * torch.randn(2, model.config.clip_samples, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.embed_audio(wave), model.embed_audio(wave))
    torch.testing.assert_close(loaded.embed_text(["a low hum"]), model.embed_text(["a low hum"]))
    with pytest.raises(CheckpointError, match="neither"):
        CLAP.from_pretrained(tmp_path)


# transformers' convert_clap_original_pytorch_to_hf.py renames LAION keys to ClapModel's; undone here by hand.
HF_TO_LAION = (("batch_norm", "bn0"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
               ("attention.self.relative_position", "attn.relative_position"), ("attention.output.dense", "attn.proj"),
               ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"))


def laion_checkpoint(hf_model: ClapModel, extra_shapes: dict, path):
    """A file as LAION-CLAP's training writes it, from a ClapModel's weights."""
    state = {}
    for key, value in hf_model.state_dict().items():
        audio_kv = key.startswith("audio_model.") and (".self.key." in key or ".self.value." in key)
        if audio_kv or "position_ids" in key:
            continue
        if key.startswith("audio_model.audio_encoder."):
            new = "audio_branch." + key[len("audio_model.audio_encoder."):]
            for theirs, laion in HF_TO_LAION:
                new = new.replace(theirs, laion)
            if ".attention.self.query." in key:
                new = new.replace("attention.self.query", "attn.qkv")
                value = torch.cat([value, hf_model.state_dict()[key.replace("query", "key")],
                                   hf_model.state_dict()[key.replace("query", "value")]])
            state["module." + new] = value
        elif key.startswith("text_model."):
            state["module.text_branch." + key[len("text_model."):]] = value
        elif "_projection.linear" in key:
            state["module." + key.replace("linear1", "0").replace("linear2", "2")] = value
        else:
            state["module." + key] = value
    for name, shape in extra_shapes.items():  # LAION's HTSAT keeps its token-semantic head and shift masks
        state[f"module.audio_branch.{name}"] = torch.randn(shape)
    state["module.audio_branch.spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024)
    state["module.text_transform.sequential.0.weight"] = torch.randn(24, 24)
    torch.save(
        {"epoch": 45, "name": "small", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path
    )
    return path


def test_laion_checkpoint_converts_to_the_same_embeddings(hf_folder, tokenizer_dir, tmp_path, capsys):
    folder, hf_model = hf_folder
    ours, _, _ = build_from_hf(folder, tokenizer=tokenizer_dir)
    extra = {k[len("audio_encoder."):]: v.shape for k, v in ours.state_dict().items()
             if k.startswith(("audio_encoder.tscam_conv.", "audio_encoder.head.")) or k.endswith("attn_mask")}
    path = laion_checkpoint(hf_model, extra, tmp_path / "630k-small.pt")
    assert main(["convert", "laion", str(path), "--out", str(tmp_path / "laion.ckpt"), "--tokenizer", tokenizer_dir,
                 "--text-heads", "2"]) == 0
    assert "text_transform" in capsys.readouterr().out
    converted = CLAP.from_checkpoint(tmp_path / "laion.ckpt")
    inputs = hf_inputs(seed=4)
    for got, want in zip(our_outputs(converted, *inputs), hf_outputs(hf_model, *inputs)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.save({"state_dict": {"module.visual.proj": torch.zeros(2)}}, tmp_path / "other.pt")
    assert main(["convert", "laion", str(tmp_path / "other.pt"), "--out", str(tmp_path / "o.ckpt")]) == 2
    assert "not a LAION-CLAP checkpoint" in capsys.readouterr().err


def test_fused_model_matches_transformers_for_short_and_long_clips(tokenizer_dir, tmp_path):
    torch.manual_seed(0)
    config = small_clap_config(fusion=True)
    config.audio_config.fusion_type = "aff_2d"
    hf_model = ClapModel(config).eval()
    with torch.no_grad():  # a gate that is not 0.5 everywhere, and trained-looking statistics
        for module in hf_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    hf_model.save_pretrained(tmp_path / "fused")
    ours, model_config, _ = build_from_hf(tmp_path / "fused", tokenizer=tokenizer_dir)
    assert model_config.model.audio_encoder["enable_fusion"] is True
    generator = torch.Generator().manual_seed(5)
    mel = -40 + 15 * torch.randn(4, 4, FRAMES, 16, generator=generator)  # whole clip + 3 crops
    longer = torch.tensor([True, False, True, False])
    with torch.no_grad():
        want = hf_model.get_audio_features(input_features=mel, is_longer=longer[:, None]).pooler_output
        got = torch.nn.functional.normalize(ours.encode_audio_features(mel, longer), dim=-1)
        short = torch.nn.functional.normalize(ours.encode_audio_features(mel, torch.zeros(4, dtype=torch.bool)), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(got[0], short[0], atol=1e-3)  # the crops were fused in for a longer clip
    torch.testing.assert_close(got[1], short[1])  # and not for a short one
    out = export_hf(ours, tmp_path / "again")
    reloaded = ClapModel.from_pretrained(out).eval()
    with torch.no_grad():
        again = reloaded.get_audio_features(input_features=mel, is_longer=longer[:, None]).pooler_output
    torch.testing.assert_close(again, want, atol=1e-5, rtol=0)


def test_embed_audio_fusion_views_are_deterministic_and_only_for_fused_models(tokenizer_dir, tmp_path):
    torch.manual_seed(0)
    config = small_clap_config(fusion=True)
    config.audio_config.fusion_type = "aff_2d"
    ClapModel(config).save_pretrained(tmp_path / "fused")
    model, _, _ = build_from_hf(tmp_path / "fused", tokenizer=tokenizer_dir)
    model.config.clip_seconds = 2.5  # 251 frames: this small image holds 256
    rate = model.config.sample_rate
    generator = torch.Generator().manual_seed(1)
    long_wave, short_wave = (
        0.1 * torch.randn(6 * rate, generator=generator),
        0.1 * torch.randn(rate, generator=generator),
    )

    views, longer = model.audio_encoder.fusion_logmel(long_wave, model.config.clip_samples)
    full = model.audio_encoder.frontend(long_wave[None])[0]
    assert longer and views.shape == (4, 251, 16)
    starts = [int(t[len(t) // 2]) for t in torch.arange(full.shape[0] - 251 + 1).tensor_split(3)]
    for view, start in zip(views[1:], starts):
        torch.testing.assert_close(view, full[start:start + 251])  # front, middle and back crops
    short_views, short_longer = model.audio_encoder.fusion_logmel(short_wave, model.config.clip_samples)
    assert not short_longer and torch.equal(short_views[0], short_views[3])
    # Less than a hop over the window: the whole log-mel is one window's frames, not "longer" (as LAION)
    edge = long_wave[:model.config.clip_samples + 100]
    edge_views, edge_longer = model.audio_encoder.fusion_logmel(edge, model.config.clip_samples)
    assert not edge_longer and edge_views.shape == (4, 251, 16)
    torch.testing.assert_close(edge_views[2], model.audio_encoder.frontend(edge[None])[0])

    fused = model.embed_audio([long_wave, short_wave], sample_rate=rate, long_audio="fusion", batch_size=1)
    again = model.embed_audio([long_wave, short_wave], sample_rate=rate, long_audio="fusion", batch_size=2)
    torch.testing.assert_close(fused, again, atol=1e-5, rtol=0)
    direct = torch.nn.functional.normalize(model.encode_audio_features(views[None], torch.tensor([True])), dim=-1)
    torch.testing.assert_close(fused[0], direct[0], atol=1e-5, rtol=0)

    from omegaconf import OmegaConf

    from clap_lightning.config import ExperimentConfig, config_from
    from tests.unit.test_export_onnx import MODELS

    tiny = CLAP(
        config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(MODELS / "tiny.yaml"))}).model
    )
    with pytest.raises(ValueError, match="enable_fusion"):
        tiny.embed_audio(short_wave, long_audio="fusion")


def test_fused_laion_checkpoint_converts_to_the_same_embeddings(tokenizer_dir, tmp_path):
    torch.manual_seed(0)
    config = small_clap_config(fusion=True)
    config.audio_config.fusion_type = "aff_2d"
    hf_model = ClapModel(config).eval()
    hf_model.save_pretrained(tmp_path / "fused")
    ours, _, _ = build_from_hf(tmp_path / "fused", tokenizer=tokenizer_dir)
    extra = {k[len("audio_encoder."):]: v.shape for k, v in ours.state_dict().items()
             if k.startswith(("audio_encoder.tscam_conv.", "audio_encoder.head.")) or k.endswith("attn_mask")}
    path = laion_checkpoint(hf_model, extra, tmp_path / "630k-fusion-small.pt")
    assert main(["convert", "laion", str(path), "--out", str(tmp_path / "f.ckpt"), "--tokenizer", tokenizer_dir,
                 "--text-heads", "2"]) == 0
    converted = CLAP.from_checkpoint(tmp_path / "f.ckpt")
    assert converted.config.audio_encoder["enable_fusion"] is True
    mel = -40 + 15 * torch.randn(2, 4, FRAMES, 16, generator=torch.Generator().manual_seed(6))
    longer = torch.tensor([True, False])
    with torch.no_grad():
        want = hf_model.get_audio_features(input_features=mel, is_longer=longer[:, None]).pooler_output
        got = torch.nn.functional.normalize(converted.encode_audio_features(mel, longer), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
