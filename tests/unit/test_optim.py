"""AdamW parameter groups and the warmup-cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clap_lightning.config import OptimConfig
from clap_lightning.lit.optim import build_optimizer, split_decay_groups, warmup_cosine


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)  # weight decays, bias does not
        self.norm = nn.LayerNorm(3)  # neither decays
        self.frozen = nn.Linear(3, 3)  # not optimised at all
        self.frozen.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.zeros(1))  # the temperature: never decays


def names_in(groups: list[dict], model: nn.Module) -> list[set[str]]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [{by_id[id(p)] for p in group["params"]} for group in groups]


def test_decay_only_on_matrices_and_never_on_norms_biases_logit_scale_or_frozen_weights():
    model = Tower()
    groups = split_decay_groups(model, weight_decay=0.2)
    assert [group["weight_decay"] for group in groups] == [0.2, 0.0]
    assert names_in(groups, model) == [{"linear.weight"}, {"linear.bias", "norm.weight", "norm.bias", "logit_scale"}]


def test_logit_scale_is_excluded_by_name_even_as_a_matrix():
    model = nn.Module()
    model.logit_scale = nn.Parameter(torch.zeros(2, 2))
    model.proj = nn.Parameter(torch.zeros(2, 2))
    assert names_in(split_decay_groups(model, 0.1), model) == [{"proj"}, {"logit_scale"}]


@pytest.mark.parametrize("step, expected", [
    (0, 0.1), (4, 0.5), (9, 1.0),  # linear warmup over 10 steps reaches the peak at step 9
    (10, 1.0),  # cosine starts at the peak
    (60, 0.1 + 0.9 * 0.5),  # half-way through the cosine
    (110, 0.1), (500, 0.1),  # the floor, and it stays there
])
def test_warmup_cosine_multiplier(step, expected):
    assert warmup_cosine(step, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) == pytest.approx(expected)


def test_cosine_is_monotone_after_warmup():
    values = [warmup_cosine(step, 5, 50, 0.0) for step in range(5, 51)]
    assert all(a >= b for a, b in zip(values, values[1:])) and values[-1] == pytest.approx(0.0)
    assert warmup_cosine(30, 5, 55, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_build_optimizer_steps_the_schedule_per_step():
    model = Tower()
    config = OptimConfig(lr=1e-2, weight_decay=0.2, betas=[0.9, 0.98], eps=1e-6, warmup_steps=2, min_lr_ratio=0.0)
    built = build_optimizer(model, config, total_steps=6)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and built["lr_scheduler"]["interval"] == "step"
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    cosine = [1e-2 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]  # 4 steps after warmup
    assert lrs == pytest.approx([5e-3, 1e-2, *cosine])
    assert all(group["lr"] == optimizer.param_groups[0]["lr"] for group in optimizer.param_groups)


def test_fused_adamw_matches_the_default_within_round_off():
    torch.manual_seed(0)
    models = [Tower(), Tower()]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0].linear.weight.detach().clone()
    optimizers = []
    for model, fused in zip(models, (False, True)):
        config = OptimConfig(lr=1e-2, weight_decay=0.2, warmup_steps=2, fused=fused)
        optimizers.append(build_optimizer(model, config, total_steps=5))
    assert optimizers[1]["optimizer"].defaults["fused"] and not optimizers[0]["optimizer"].defaults["fused"]
    x = torch.randn(8, 4)
    for _ in range(5):
        for model, built in zip(models, optimizers):
            built["optimizer"].zero_grad()
            (model.norm(model.linear(x)) * model.logit_scale.exp()).square().mean().backward()
            built["optimizer"].step()
            built["lr_scheduler"]["scheduler"].step()
    for (name, ref), (_, fused) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-7, msg=name)
    assert (models[0].linear.weight - start).abs().max() > 1e-3  # five steps really moved the weights
