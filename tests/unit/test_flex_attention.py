"""FlexAttention window attention (`attention: flex`) computes what the SDPA path computes.

torch 2.11 refuses FlexAttention's backward for CPU tensors up front (`_validate_device`), though
its unfused reference (what eager `flex_attention` runs) differentiates on any device; the
gradient tests lift that guard so they check our score_mod, which is the function the fused
GPU kernel evaluates.
"""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.attention import flex_attention as flex

from clap_lightning.encoders.htsat import HTSATConfig, HTSATEncoder
from clap_lightning.encoders import swin
from clap_lightning.encoders.swin import SwinTransformerBlock

torch.set_num_threads(1)

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def cpu_flex_backward(monkeypatch):
    """Let FlexAttention differentiate on CPU through its unfused reference (see module doc)."""
    monkeypatch.setattr(flex, "_validate_device", lambda *tensors: None)


def tiny_audio_config(**overrides) -> HTSATConfig:
    """The tiny model's HTSAT with two blocks per stage, so stages 0 and 1 hold a shifted block."""
    section = OmegaConf.to_container(OmegaConf.load(TINY))["audio_encoder"]
    section.pop("name")
    return HTSATConfig(**{**section, "depths": [2, 2, 2], **overrides})


def build_pair(**overrides) -> tuple[HTSATEncoder, HTSATEncoder]:
    """Same weights in both modes: the flex model loads the sdpa model's state dict strictly."""
    torch.manual_seed(0)
    sdpa = HTSATEncoder(tiny_audio_config(**overrides))
    flexed = HTSATEncoder(tiny_audio_config(attention="flex", **overrides))
    flexed.load_state_dict(sdpa.state_dict(), strict=True)
    return sdpa, flexed


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def test_state_dict_keys_and_shapes_are_identical():
    sdpa, flexed = build_pair()
    a, b = sdpa.state_dict(), flexed.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert "layers.0.blocks.1.attn_mask" in a  # a shifted block is present


@pytest.mark.parametrize("shift", [0, 2])
def test_block_output_and_gradients_match_sdpa(shift, cpu_flex_backward):
    torch.manual_seed(0)
    blocks = [SwinTransformerBlock(16, (8, 8), 2, 4, shift, 2.0, 0.0, 0.0, 0.0, mode) for mode in ("sdpa", "flex")]
    blocks[1].load_state_dict(blocks[0].state_dict(), strict=True)
    x = torch.randn(3, 64, 16)
    outs, inputs = [], []
    for block in blocks:
        xi = x.clone().requires_grad_()
        out = block(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
        inputs.append(xi.grad)
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    torch.testing.assert_close(inputs[1], inputs[0], **TOL)
    g_sdpa, g_flex = grads(blocks[0]), grads(blocks[1])
    assert g_flex["attn.relative_position_bias_table"].abs().sum() > 0
    for name in g_sdpa:
        torch.testing.assert_close(g_flex[name], g_sdpa[name], **TOL, msg=name)


def test_encoder_training_step_matches_sdpa(cpu_flex_backward):
    sdpa, flexed = build_pair()
    torch.manual_seed(1)
    wave = torch.randn(2, 32640)
    lengths = torch.tensor([32640, 20000])  # the tiny config masks padding; attention is unaffected
    outs = []
    for model in (sdpa, flexed):
        out = model.train()(wave, lengths)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    g_sdpa, g_flex = grads(sdpa), grads(flexed)
    assert sum("relative_position_bias_table" in name for name in g_flex) == 6
    for name in g_sdpa:
        torch.testing.assert_close(g_flex[name], g_sdpa[name], **TOL, msg=name)


def test_eval_embedding_matches_sdpa():
    sdpa, flexed = build_pair()
    wave = torch.randn(3, 32640)
    with torch.no_grad():
        torch.testing.assert_close(flexed.eval()(wave), sdpa.eval()(wave), **TOL)


def test_config_refuses_unknown_mode_and_flex_with_attention_dropout():
    with pytest.raises(ValueError, match="HTSATConfig.attention"):
        tiny_audio_config(attention="xformers")
    with pytest.raises(ValueError, match="attn_drop_rate"):
        tiny_audio_config(attention="flex", attn_drop_rate=0.1)


def test_compiled_model_traces_flex_attention_in_one_graph():
    """`model.compile` with flex: dynamo takes FlexAttention into the model's graph (no breaks)."""
    sdpa, flexed = build_pair()
    wave = torch.randn(2, 32640)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(flexed.eval())(wave)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        compiled = torch.compile(flexed, backend="aot_eager")(wave)  # inductor's CPU flex kernel is not used
        torch.testing.assert_close(compiled, sdpa.eval()(wave), **TOL)
    torch._dynamo.reset()


def test_compiled_flex_attention_compiles_past_dynamos_default_recompile_limit():
    """Each model case compiles its own kernel: more than dynamo's default 8 must not fall back
    to the unfused reference (HTSAT 2023 has 14 cases in a training step and an eval pass)."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    default = torch._dynamo.config.recompile_limit
    cases = default + 2
    assert cases <= swin.FLEX_RECOMPILE_LIMIT
    table = torch.randn(4)
    with torch.no_grad():
        for batch in range(1, cases + 1):
            q, k, v = torch.randn(3, batch, 4, 16, 8).unbind(0)
            out = swin.call_compiled_flex_attention(
                q, k, v, lambda score, b, h, q_idx, kv_idx: score + table[h], backend=counting_backend)
            assert out.shape == q.shape
    assert len(graphs) == cases
    assert torch._dynamo.config.recompile_limit == default  # raised only for the call
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_model_with_flex_runs_inductor_on_cpu():
    """`model.compile` + flex on CPU: inductor's CPU kernel needs q, k, v in separate buffers
    (about 20 s of build on a 2-core VM)."""
    torch.manual_seed(0)
    blocks = [SwinTransformerBlock(16, (8, 8), 2, 4, 2, 2.0, 0.0, 0.0, 0.0, mode) for mode in ("sdpa", "flex")]
    blocks[1].load_state_dict(blocks[0].state_dict(), strict=True)
    x = torch.randn(2, 64, 16)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(blocks[1].eval())(x), blocks[0].eval()(x), **TOL)
    torch._dynamo.reset()
