"""`model.compile: true`: the compiled encoders train like the eager ones (values and gradients)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.lit.pretraining import ClapPretraining

DEMO = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "demo.yaml"


def step(lit: ClapPretraining, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    audio_emb, text_emb, logit_scale = lit(batch)
    loss = lit.objective(audio_emb, text_emb, logit_scale).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in lit.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex operators")
def test_compiled_encoders_match_eager_values_and_gradients():
    # No dropout, so both runs draw nothing at random; training mode, so bn0 uses the batch's statistics.
    # The plain objective: this batch has no labels for the demo's multi_positive one.
    overrides = ["model.proj_dropout=0.0", "objective.false_negatives=keep"]
    eager = ClapPretraining(load_config(ExperimentConfig, DEMO, overrides)).train()
    compiled = ClapPretraining(load_config(ExperimentConfig, DEMO, [*overrides, "model.compile=true"])).train()
    compiled.load_state_dict(eager.state_dict())  # same weights; compile keeps the state-dict keys
    assert list(compiled.state_dict()) == list(eager.state_dict())
    generator = torch.Generator().manual_seed(0)
    batch = {"audio": 0.1 * torch.randn(4, 32640, generator=generator),
             "input_ids": torch.randint(0, 200, (4, 9), generator=generator),
             "attention_mask": torch.ones(4, 9, dtype=torch.long)}
    batch["attention_mask"][2:, 6:] = 0  # per-batch padding
    loss, grads = step(eager, batch)
    compiled_loss, compiled_grads = step(compiled, batch)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == grads.keys() and len(grads) > 50
    for name, grad in grads.items():  # fp32 round-off, relative to each tensor's largest gradient
        scale = grad.abs().max().clamp(min=1e-12)
        assert (compiled_grads[name] - grad).abs().max() / scale < 1e-4, name
