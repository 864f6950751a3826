"""HTSAT encoder: shapes, determinism, batch independence, bf16, checkpointing, registry."""

import copy

import pytest
import torch

from clap_lightning.encoders.htsat import HTSATConfig, HTSATEncoder
from clap_lightning.encoders.registry import AUDIO_ENCODERS

torch.set_num_threads(1)

# A small test size: 2 s at 16 kHz -> 126 frames, stretched to 128 and folded into 64 x 64.
TINY = dict(
    sample_rate=16000, mel_sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, fmax=8000.0,
    spec_size=64, embed_dim=32, depths=[1, 1, 2], num_heads=[2, 4, 8], window_size=4, num_classes=16,
)


def build_tiny(**overrides) -> HTSATEncoder:
    torch.manual_seed(0)
    return HTSATEncoder(HTSATConfig(**{**TINY, **overrides}))


def test_tiny_shapes_train_and_eval():
    model = build_tiny()
    assert model.out_dim == 128
    wave = torch.randn(3, 32000)
    assert model.train()(wave).shape == (3, 128)
    model.eval()
    out = model.forward_features(wave)
    assert out["embedding"].shape == (3, 128)
    assert out["clipwise_output"].shape == (3, 16)
    assert out["framewise_output"].shape[::2] == (3, 16)
    torch.testing.assert_close(out["embedding"], model(wave))


def test_default_config_is_the_msclap_2023_shape():
    cfg = HTSATConfig()
    assert (cfg.out_dim, cfg.freq_ratio, cfg.max_frames) == (768, 4, 1024)
    model = HTSATEncoder(cfg).eval()
    state = model.state_dict()
    # A few msclap keys and shapes, so its checkpoint converts by a prefix rename.
    assert state["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (225, 4)
    assert state["layers.0.blocks.1.attn_mask"].shape == (64, 64, 64)
    assert "layers.3.blocks.1.attn_mask" not in state  # 8 x 8 grid = one window: no shift
    assert state["layers.2.downsample.reduction.weight"].shape == (768, 1536)
    assert state["tscam_conv.weight"].shape == (527, 768, 2, 3)
    assert state["head.weight"].shape == (527, 527)
    assert state["bn0.running_mean"].shape == (64,)
    with torch.no_grad():
        emb = model(torch.randn(1, 44100))  # 1 s is stretched to the same 256 x 256 image as 7 s
    assert emb.shape == (1, 768) and torch.isfinite(emb).all()


def test_eval_is_deterministic_and_batch_independent():
    model = build_tiny().eval()
    wave = torch.randn(4, 32000)
    with torch.no_grad():
        batch = model(wave)
        again = model(wave)
        alone = model(wave[2:3])
    assert torch.equal(batch, again)
    torch.testing.assert_close(alone[0], batch[2], atol=1e-5, rtol=1e-5)


def test_training_mode_is_stochastic():
    model = build_tiny(drop_path_rate=0.0).train()
    wave = torch.randn(4, 32000)
    torch.manual_seed(1)
    first = model(wave)
    torch.manual_seed(2)
    second = model(wave)  # different SpecAugment stripes
    assert not torch.allclose(first, second)


def test_bf16_autocast_forward_on_cpu():
    model = build_tiny().eval()
    wave = torch.randn(2, 32000)
    with torch.no_grad():
        reference = model(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model(wave)
    assert emb.shape == (2, 128) and torch.isfinite(emb).all()
    assert torch.nn.functional.cosine_similarity(emb.float(), reference).min() > 0.99


def test_whole_model_bf16_cast_as_deepspeed_does():
    """DeepSpeed bf16 casts every parameter and buffer (`module.bfloat16()`) and feeds bf16 audio."""
    model = build_tiny().eval()
    wave = torch.randn(2, 32000)
    with torch.no_grad():
        reference = model(wave)
        cast = copy.deepcopy(model).bfloat16()
        emb = cast(wave.bfloat16())
    assert cast.frontend.window.dtype == cast.frontend.mel_filters.dtype == torch.float32
    assert torch.equal(cast.frontend.mel_filters, model.frontend.mel_filters)  # not rounded through bf16
    assert cast.bn0.weight.dtype == torch.bfloat16 and emb.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(emb.float(), reference).min() > 0.98


def test_checkpointing_gives_the_same_gradients():
    plain = build_tiny(drop_path_rate=0.2).train()
    ckpt = build_tiny(drop_path_rate=0.2, use_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    wave = torch.randn(4, 32000)
    for model in (plain, ckpt):
        torch.manual_seed(3)  # same SpecAugment stripes and drop-path draws in both
        model(wave).square().mean().backward()
    grads = 0
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        assert (p.grad - q.grad).abs().max() < 1e-6, name
        grads += 1
    assert grads > 20


def test_classifier_head_is_frozen_unless_asked():
    frozen = build_tiny()
    assert not any(p.requires_grad for p in frozen.tscam_conv.parameters())
    assert not any(p.requires_grad for p in frozen.head.parameters())
    trainable = build_tiny(train_classifier_head=True)
    assert all(p.requires_grad for p in trainable.tscam_conv.parameters())


def test_registry_builds_by_name():
    model = AUDIO_ENCODERS.build("htsat", TINY)
    assert isinstance(model, HTSATEncoder) and model.out_dim == 128
    assert "htsat" in AUDIO_ENCODERS.names()


def test_bad_config_key_is_one_line_error():
    with pytest.raises(ValueError, match="n_melz") as err:
        AUDIO_ENCODERS.build("htsat", {**TINY, "n_melz": 32}, where="model.audio_encoder")
    assert "\n" not in str(err.value)
    assert "model.audio_encoder.n_melz" in str(err.value)


def test_impossible_shapes_name_the_field():
    with pytest.raises(ValueError, match="window_size"):
        HTSATConfig(**{**TINY, "window_size": 3})
    with pytest.raises(ValueError, match="num_heads"):
        HTSATConfig(**{**TINY, "num_heads": [2, 4]})


def test_too_long_input_is_refused():
    model = build_tiny().eval()
    with pytest.raises(ValueError, match="at most 128 frames"):
        model(torch.randn(1, 16000 * 3))


@pytest.mark.parametrize("size,stride", [(4, 4), (8, 8)])
def test_patch_embed_matmul_equals_the_conv(size, stride):
    from clap_lightning.encoders.htsat import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(HTSATConfig(spec_size=64, patch_size=size, patch_stride=stride, embed_dim=16))
    assert embed.as_matmul
    image = torch.randn(2, 1, 64, 64, requires_grad=True)
    results = []
    for as_matmul in (False, True):
        embed.as_matmul = as_matmul
        embed.zero_grad()
        image.grad = None
        out = embed(image)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), image.grad.clone(), embed.proj.weight.grad.clone(), embed.proj.bias.grad.clone()))
    for conv, matmul in zip(*results):
        torch.testing.assert_close(matmul, conv, atol=1e-5, rtol=1e-5)


def test_overlapping_patches_keep_the_conv():
    from clap_lightning.encoders.htsat import PatchEmbed

    embed = PatchEmbed(HTSATConfig(spec_size=64, patch_size=6, patch_stride=4, embed_dim=16))
    assert not embed.as_matmul and embed(torch.randn(1, 1, 64, 64)).shape == (1, 256, 16)


@pytest.mark.parametrize("shifted", [False, True])
def test_training_attention_matches_sdpa_values_and_gradients(shifted):
    import torch.nn.functional as F

    from clap_lightning.encoders.swin import WindowAttention, compute_shift_mask

    torch.manual_seed(0)
    attn = WindowAttention(dim=16, window=4, num_heads=2, attn_drop=0.0, proj_drop=0.0)
    torch.nn.init.normal_(attn.relative_position_bias_table)
    shift_mask = compute_shift_mask(8, 8, 4, 2) if shifted else None  # 4 windows of 16 tokens
    x = torch.randn(8, 16, 16, requires_grad=True)  # 2 images x 4 windows

    def reference(x):  # SDPA with the bias (and shift mask) as one full-batch additive mask
        q, k, v = attn.qkv(x).view(8, 16, 3, 2, 8).permute(2, 0, 3, 1, 4)
        mask = attn.compute_bias().unsqueeze(0)
        if shift_mask is not None:
            mask = (mask + shift_mask.unsqueeze(1)).repeat(2, 1, 1, 1)
        return attn.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(8, 16, 16))

    weights = torch.randn(8, 16, 16)
    grads = []
    for fn in (reference, lambda x: attn(x, shift_mask)):  # the module takes the explicit path with grads on
        attn.zero_grad()
        x.grad = None
        out = fn(x)
        (out * weights).sum().backward()
        grads.append(
            (out.detach(), x.grad.clone(), attn.relative_position_bias_table.grad.clone(), attn.qkv.weight.grad.clone())
        )
    for ref, ours in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # inference takes the SDPA path: same values
        torch.testing.assert_close(attn(x, shift_mask), grads[0][0], atol=1e-5, rtol=1e-4)


def test_demo_model_clip_fills_the_image_without_a_time_stretch():
    from pathlib import Path

    from omegaconf import OmegaConf

    model = OmegaConf.to_container(
        OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml")
    )
    section = {k: v for k, v in model["audio_encoder"].items() if k != "name"}
    encoder = HTSATEncoder(HTSATConfig(**section))
    frames = encoder.frontend(torch.zeros(1, round(model["sample_rate"] * model["clip_seconds"]))).shape[1]
    assert frames == encoder.cfg.spec_size * encoder.cfg.freq_ratio  # bicubic stretch skipped, nothing cropped


@pytest.mark.parametrize(("config_name", "widths"), [("msclap_2023", (64, 8)), ("tiny", (16, 8))])
def test_spec_augment_widths_are_relative_to_the_image(config_name, widths):
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "configs" / "model" / f"{config_name}.yaml"
    section = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path))["audio_encoder"].items() if k != "name"}
    cfg = AUDIO_ENCODERS.parse_config("htsat", section)
    encoder = HTSATEncoder(cfg)
    # msclap's torchlibrosa widths (64 frames of 1024, 8 of 64 bins), whatever the clip's frame count
    assert encoder.spec_augmenter.drop_widths(965, cfg.n_mels) == widths


def test_spec_augment_options_are_validated_with_their_key():
    with pytest.raises(ValueError, match="spec_augment.freq_width: expected a fraction"):
        AUDIO_ENCODERS.parse_config("htsat", {**TINY, "spec_augment": {"freq_width": 8}}, where="model.audio_encoder")
    with pytest.raises(ValueError, match="model.audio_encoder.spec_augment.time_widht"):
        AUDIO_ENCODERS.parse_config("htsat", {**TINY, "spec_augment": {"time_widht": 0.1}}, where="model.audio_encoder")
    cfg = AUDIO_ENCODERS.parse_config("htsat", {**TINY, "spec_augment": {"time_stripes": 3}})
    assert (cfg.spec_augment.time_stripes, cfg.spec_augment.time_width) == (3, 0.0625)
