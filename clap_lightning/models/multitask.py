"""Multi-task audio classifier: one audio encoder, one linear head per task, and the masked loss.

Supervised multi-task pretraining of the audio encoder (the CLAP-2023 paper's "HTSAT-22":
HTSAT trained on 22 audio tasks before contrastive training). Each task is single-label
(cross-entropy), multi-label (clip-level binary cross-entropy, as AudioSet) or regression
(mean squared error on a standardised target). A batch mixes clips of several sources, so
each clip carries a label for some tasks only: `compute_multitask_loss` takes a boolean
mask per task and ignores the rows a task has no label for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.encoders.registry import build_audio_encoder

TASK_KINDS = ("single", "multi", "regression")


@dataclass(frozen=True)
class HeadSpec:
    """What the model needs to know about one task's head."""

    name: str
    kind: str  # single | multi | regression
    num_outputs: int  # classes (single, multi) or 1 (regression)
    weight: float = 1.0  # factor of this task's loss in the sum


class MultiTaskClassifier(nn.Module):
    """Waveform [B, T] -> {task: logits [B, C] (single, multi) or prediction [B] (regression)}.

    `audio_encoder` is built from the same registry section as the CLAP model's
    (`model.audio_encoder`), so its state dict loads into `CLAP.audio_encoder` unchanged.
    """

    def __init__(self, audio_encoder_section: Mapping, heads: list[HeadSpec], dropout: float = 0.0) -> None:
        super().__init__()
        options = dict(audio_encoder_section)
        self.audio_encoder = build_audio_encoder(options.pop("name"), options)
        self.specs = {spec.name: spec for spec in heads}
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({spec.name: nn.Linear(self.audio_encoder.out_dim, spec.num_outputs)
                                    for spec in heads})

    def forward(self, audio: torch.Tensor, audio_length: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """`audio_length` [B] (real samples per clip) masks the padding when the encoder's `mask_padding` is on."""
        audio_emb = self.dropout(self.audio_encoder(audio, audio_length))  # [B, D]
        outputs = {}
        for name, head in self.heads.items():
            out = head(audio_emb)
            outputs[name] = out[:, 0] if self.specs[name].kind == "regression" else out
        return outputs


def _per_sample_loss(kind: str, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Loss of every row [B]; unlabelled rows get a harmless stand-in target (their loss is masked out).

    Replacing the target before the loss, not only masking after it, matters: a NaN or an
    out-of-range target would make a NaN that a zero mask does not remove from the gradient.
    """
    if kind == "single":
        safe = torch.where(mask, target.long(), torch.zeros_like(target, dtype=torch.long))
        return F.cross_entropy(output, safe, reduction="none")
    if kind == "multi":
        safe = torch.where(mask[:, None], target.to(output.dtype), torch.zeros_like(output))
        return F.binary_cross_entropy_with_logits(output, safe, reduction="none").mean(dim=1)
    if kind == "regression":
        safe = torch.where(mask, target.to(output.dtype), output.detach())
        return (output - safe).square()
    raise ValueError(f"unknown task kind '{kind}'; known: {', '.join(TASK_KINDS)}")


def compute_multitask_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                           masks: Mapping[str, torch.Tensor],
                           specs: Mapping[str, HeadSpec]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over tasks of weight x (mean loss over the rows labelled for that task).

    A task with no labelled row in the batch contributes exactly 0, yet its head stays in the
    graph (with a zero gradient), so DDP sees every parameter used in every step.

    Args:
        outputs: {task: logits [B, C] or prediction [B]}.
        targets: {task: class index [B] (single), multi-hot [B, C] (multi) or value [B] (regression)}.
        masks: {task: bool [B]}, True where the clip has a label for that task.
        specs: {task: HeadSpec}.

    Returns:
        (total loss, {task: that task's mean loss (0 when unlabelled)}).
    """
    total = None
    per_task: dict[str, torch.Tensor] = {}
    for name, spec in specs.items():
        mask = masks[name].bool()
        losses = _per_sample_loss(spec.kind, outputs[name], targets[name], mask)
        task_loss = (losses * mask.to(losses.dtype)).sum() / mask.sum().clamp(min=1)
        per_task[name] = task_loss
        total = spec.weight * task_loss if total is None else total + spec.weight * task_loss
    if total is None:
        raise ValueError("compute_multitask_loss needs at least one task")
    return total, per_task
