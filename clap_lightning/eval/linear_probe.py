"""Linear probe: multinomial logistic regression on frozen audio embeddings, one fixed recipe.

The recipe is fixed in advance (no tuning on test folds): features standardised with the
training set's statistics, full-batch L-BFGS with a strong-Wolfe line search, an L2 penalty
on the weights. ESC-50's protocol is 5-fold cross-validation over the json `fold` field
(1-5): each fold is the test set once, the other four train, and the accuracies are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.errors import DataError
from clap_lightning.eval.metrics import accuracy


@dataclass
class LinearProbeConfig:
    """The fixed logistic-regression recipe."""

    max_iter: int = 500  # L-BFGS iterations over the full training set
    l2: float = 1e-3  # penalty on the squared weight norm, added to the mean cross-entropy
    standardize: bool = True  # z-score features with the training set's mean and std
    seed: int = 0  # seeds the weight initialisation


class LinearProbe(nn.Module):
    """Standardisation followed by a linear layer; `forward` returns logits [N, C]."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


def fit_linear_probe(features: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     config: LinearProbeConfig | None = None) -> LinearProbe:
    """Fit a probe on `[N, D]` features and `[N]` class indices."""
    config = config or LinearProbeConfig()
    features = features.detach().float()
    if features.ndim != 2 or targets.shape != (features.shape[0],) or features.shape[0] == 0:
        raise ValueError(f"expected features [N, D] and targets [N] with N > 0; got {tuple(features.shape)} "
                         f"and {tuple(targets.shape)}")
    generator = torch.Generator().manual_seed(config.seed)
    probe = LinearProbe(features.shape[1], num_classes)
    with torch.no_grad():
        probe.linear.weight.normal_(0, 0.01, generator=generator)
        probe.linear.bias.zero_()
        if config.standardize:
            probe.mean.copy_(features.mean(0))
            probe.std.copy_(features.std(0, unbiased=False).clamp(min=1e-6))
    optimizer = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=config.max_iter,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")
    targets = targets.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), targets) + config.l2 * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: LinearProbe, features: torch.Tensor, targets: torch.Tensor) -> float:
    return accuracy(probe(features.float()), targets)


def fold_splits(folds: Sequence[Any]) -> list[tuple[Any, torch.Tensor, torch.Tensor]]:
    """(fold, train rows, test rows) for each distinct fold value, in sorted order: each is the test set once."""
    if any(f is None for f in folds):
        raise DataError(f"{sum(f is None for f in folds)} clip(s) have no fold number")
    values = sorted(set(folds), key=lambda f: (str(type(f)), f))
    if len(values) < 2:
        raise DataError(f"cross-validation needs at least 2 folds; found {values}")
    fold_of = torch.tensor([values.index(f) for f in folds])
    return [(value, (fold_of != i).nonzero()[:, 0], (fold_of == i).nonzero()[:, 0]) for i, value in enumerate(values)]


@dataclass
class ProbeResult:
    """Per-fold test accuracies of a cross-validated probe."""

    fold_accuracy: dict[Any, float] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        return sum(self.fold_accuracy.values()) / len(self.fold_accuracy)


def cross_validate_probe(features: torch.Tensor, targets: torch.Tensor, folds: Sequence[Any],
                         num_classes: int | None = None, config: LinearProbeConfig | None = None) -> ProbeResult:
    """Leave-one-fold-out probe accuracy (ESC-50: 5 folds); a fresh probe per fold."""
    num_classes = num_classes or int(targets.max()) + 1
    result = ProbeResult()
    for fold, train, test in fold_splits(folds):
        probe = fit_linear_probe(features[train], targets[train], num_classes, config)
        result.fold_accuracy[fold] = probe_accuracy(probe, features[test], targets[test])
    return result


def train_test_probe(train_features: torch.Tensor, train_targets: torch.Tensor, test_features: torch.Tensor,
                     test_targets: torch.Tensor, num_classes: int, config: LinearProbeConfig | None = None) -> float:
    """Probe accuracy for a task with a fixed train / test split (no folds)."""
    probe = fit_linear_probe(train_features, train_targets, num_classes, config)
    return probe_accuracy(probe, test_features, test_targets)
