"""Mapper shapes and a clapcap-layout state-dict round trip checked against an independent forward."""

from __future__ import annotations

import pytest
import torch

from clap_lightning.models.mapper import (MapperConfig, MLPMapper, TransformerMapper, build_mapper,
                                          load_clapcap_mapper, strip_clapcap_prefix)

SMALL = dict(d_audio=12, n_embd=16, prefix_length=5, clip_length=3, num_layers=2, num_heads=4)


def clapcap_transformer_state(cfg: MapperConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict written key by key in clapcap's `clap_project.*` layout (msclap models/mapper.py)."""
    d, h = cfg.n_embd, int(cfg.n_embd * cfg.mlp_ratio)
    shapes = {"linear.weight": (cfg.clip_length * d, cfg.d_audio), "linear.bias": (cfg.clip_length * d,),
              "prefix_const": (cfg.prefix_length, d)}
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        shapes.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "norm2.weight": (d,),
                       p + "norm2.bias": (d,), p + "attn.to_queries.weight": (d, d),
                       p + "attn.to_keys_values.weight": (2 * d, d), p + "attn.project.weight": (d, d),
                       p + "attn.project.bias": (d,), p + "mlp.fc1.weight": (h, d), p + "mlp.fc1.bias": (h,),
                       p + "mlp.fc2.weight": (d, h), p + "mlp.fc2.bias": (d,)})
    return {"clap_project." + k: torch.randn(s, generator=gen) * 0.3 for k, s in shapes.items()}


def reference_transformer_forward(state: dict[str, torch.Tensor], cfg: MapperConfig, x: torch.Tensor) -> torch.Tensor:
    """clapcap's TransformerMapper forward, written out with einsum as upstream does."""
    s = {k[len("clap_project."):]: v for k, v in state.items()}
    b, d, heads = x.shape[0], cfg.n_embd, cfg.num_heads
    lin = lambda t, w, bias=None: t @ s[w].T + (s[bias] if bias else 0)  # noqa: E731
    h = lin(x, "linear.weight", "linear.bias").view(b, cfg.clip_length, d)
    h = torch.cat((h, s["prefix_const"].expand(b, -1, -1)), dim=1)
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        y = torch.nn.functional.layer_norm(h, (d,), s[p + "norm1.weight"], s[p + "norm1.bias"])
        n = y.shape[1]
        q = lin(y, p + "attn.to_queries.weight").reshape(b, n, heads, d // heads)
        kv = lin(y, p + "attn.to_keys_values.weight").reshape(b, n, 2, heads, d // heads)
        att = torch.einsum("bnhd,bmhd->bnmh", q, kv[:, :, 0]) * (d // heads) ** -0.5
        out = torch.einsum("bnmh,bmhd->bnhd", att.softmax(dim=2), kv[:, :, 1]).reshape(b, n, d)
        h = h + lin(out, p + "attn.project.weight", p + "attn.project.bias")
        y = torch.nn.functional.layer_norm(h, (d,), s[p + "norm2.weight"], s[p + "norm2.bias"])
        y = torch.relu(lin(y, p + "mlp.fc1.weight", p + "mlp.fc1.bias"))
        h = h + lin(y, p + "mlp.fc2.weight", p + "mlp.fc2.bias")
    return h[:, cfg.clip_length:]


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_mapper_output_shape(name):
    cfg = MapperConfig(name=name, **SMALL)
    out = build_mapper(cfg)(torch.randn(3, cfg.d_audio))
    assert out.shape == (3, cfg.prefix_length, cfg.n_embd)


def test_default_config_is_clapcap():
    cfg = MapperConfig()
    assert (cfg.prefix_length, cfg.clip_length, cfg.num_layers, cfg.num_heads, cfg.d_audio, cfg.n_embd) == \
        (40, 40, 8, 8, 1024, 768)
    mapper = TransformerMapper(cfg)
    assert mapper.prefix_const.shape == (40, 768) and mapper.prefix_const.requires_grad


def test_clapcap_transformer_state_dict_round_trip():
    cfg = MapperConfig(**SMALL)
    gen = torch.Generator().manual_seed(0)
    state = clapcap_transformer_state(cfg, gen)
    state["clap.some_encoder.weight"] = torch.zeros(2)  # other clapcap keys are ignored
    mapper = TransformerMapper(cfg)
    load_clapcap_mapper(mapper, state)
    x = torch.randn(4, cfg.d_audio, generator=gen)
    torch.testing.assert_close(mapper(x), reference_transformer_forward(state, cfg, x), rtol=1e-5, atol=1e-5)
    # Saving back gives exactly the clapcap keys and tensors.
    back = {"clap_project." + k: v for k, v in mapper.state_dict().items()}
    assert set(back) == set(state) - {"clap.some_encoder.weight"}
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_clapcap_mlp_state_dict_round_trip():
    cfg = MapperConfig(name="mlp", **SMALL)
    out = cfg.n_embd * cfg.prefix_length
    gen = torch.Generator().manual_seed(1)
    state = {"clap_project.model.0.weight": torch.randn(out // 2, cfg.d_audio, generator=gen),
             "clap_project.model.0.bias": torch.randn(out // 2, generator=gen),
             "clap_project.model.2.weight": torch.randn(out, out // 2, generator=gen),
             "clap_project.model.2.bias": torch.randn(out, generator=gen)}
    mapper = MLPMapper(cfg)
    load_clapcap_mapper(mapper, state)
    x = torch.randn(2, cfg.d_audio, generator=gen)
    s = {k.split(".", 1)[1]: v for k, v in state.items()}
    expected = torch.tanh(x @ s["model.0.weight"].T + s["model.0.bias"]) @ s["model.2.weight"].T + s["model.2.bias"]
    torch.testing.assert_close(mapper(x), expected.view(2, cfg.prefix_length, cfg.n_embd))


def test_errors_are_one_line():
    with pytest.raises(ValueError, match="unknown mapper 'conv'; known: mlp, transformer"):
        build_mapper(MapperConfig(name="conv"))
    with pytest.raises(ValueError, match="clap_project"):
        strip_clapcap_prefix({"model.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError):  # a layout mismatch is refused, not silently skipped
        load_clapcap_mapper(TransformerMapper(MapperConfig(**SMALL)), {"clap_project.linear.weight": torch.zeros(1)})
