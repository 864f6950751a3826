"""Symmetric InfoNCE over a batch whose negatives span every rank (CLAP, CLIP).

The loss follows open_clip's ``ClipLoss`` (src/open_clip/loss.py): cross-entropy of
audio→text and text→audio logits against the diagonal, averaged. Logits are computed in
fp32 whatever the autocast state, because bf16 similarities (8 bits of mantissa) times a
logit scale up to 100 round to steps of ~0.4 and flatten the softmax.

Label-aware negatives. Corpora whose captions come from label templates put many pairs of
one class in a batch; plain InfoNCE pushes them apart as negatives. Each pair may carry
group keys (``[n, K]`` int64, e.g. a hash of its caption and one of its label set); pairs
sharing any key are *positives* of each other. ``false_negatives="mask"`` drops the other
positives from every softmax denominator; ``"multi_positive"`` spreads the target uniformly
over all positives, the cross-modal form of the supervised contrastive loss (Khosla et al.,
2020, L_out: the anchor is another modality, so it is not removed from the denominator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clap_lightning.objectives.collectives import all_reduce_mean, gather_ids, gather_with_grad, rank

MAX_LOG_LOGIT_SCALE = math.log(100.0)  # CLIP caps the logit scale (inverse temperature) at 100
FALSE_NEGATIVE_MODES = ("keep", "mask", "multi_positive")  # what other pairs of a pair's group are


def compute_logit_scale(logit_scale: Tensor) -> Tensor:
    """Return exp(clamp(logit_scale, 0, ln 100)) in fp32.

    Args:
        logit_scale: the raw learnable log-scale, shape ``(1,)`` (DeepSpeed cannot
            broadcast a 0-dim parameter); outside ``[0, ln 100]`` its gradient is zero.
    """
    return logit_scale.float().clamp(0.0, MAX_LOG_LOGIT_SCALE).exp()


def normalize_embeddings(emb: Tensor) -> Tensor:
    """Return `emb` L2-normalised along the last dim, in fp32 whatever the autocast state."""
    with torch.autocast(device_type=emb.device.type, enabled=False):
        return F.normalize(emb.float(), dim=-1)


def compute_scaled_similarity(rows: Tensor, columns: Tensor, logit_scale: Tensor) -> Tensor:
    """Return ``exp(clamped logit_scale) * rows @ columns.T`` in fp32 for already normalised embeddings."""
    with torch.autocast(device_type=rows.device.type, enabled=False):
        # Scaling the [n, D] rows rather than the [n, N] product keeps one logits-sized buffer fewer.
        return (compute_logit_scale(logit_scale) * rows.float()) @ columns.float().T


def compute_logits(audio_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """Return scaled cosine similarities of every audio row against every text row, in fp32.

    Args:
        audio_emb: ``[Na, D]`` audio embeddings, any float dtype, not necessarily normalised.
        text_emb: ``[Nt, D]`` text embeddings.
        logit_scale: raw log-scale, see `compute_logit_scale`.

    Returns:
        ``logits_per_audio``, ``[Na, Nt]`` float32; its transpose is ``logits_per_text``.
    """
    return compute_scaled_similarity(normalize_embeddings(audio_emb), normalize_embeddings(text_emb), logit_scale)


def find_positives(row_groups: Tensor, column_groups: Tensor, labels: Tensor) -> Tensor:
    """Return ``[n, N]`` bool: True where row pair and column pair share a group key, and at each row's label.

    Args:
        row_groups: ``[n]`` or ``[n, K]`` integer group keys of the row pairs.
        column_groups: ``[N]`` or ``[N, K]`` keys of the column pairs (same K).
        labels: ``[n]`` index of each row's own column.
    """
    rows, columns = row_groups.reshape(len(row_groups), -1), column_groups.reshape(len(column_groups), -1)
    positives = (rows[:, None, :] == columns[None, :, :]).any(dim=-1)  # [n, N]
    positives[torch.arange(len(labels), device=labels.device), labels] = True
    return positives


def symmetric_infonce(logits_per_audio: Tensor, labels: Tensor, logits_per_text: Tensor | None = None,
                      positives: Tensor | None = None, false_negatives: str = "keep") -> Tensor:
    """Return the mean of the audio→text and text→audio cross-entropies.

    Args:
        logits_per_audio: ``[n, N]`` audio rows against text columns.
        labels: ``[n]`` index of each row's positive column.
        logits_per_text: ``[n, N]`` text rows against audio columns; defaults to the
            transpose of a square ``logits_per_audio`` (the global loss).
        positives: ``[n, N]`` bool from `find_positives`; only read when `false_negatives` is not "keep".
        false_negatives: "keep" (every other column is a negative), "mask" (positives other
            than the label are left out of the softmax, so they get no gradient) or
            "multi_positive" (the target is uniform over the row's positives).
    """
    if logits_per_text is None:
        logits_per_text = logits_per_audio.T
    if false_negatives not in FALSE_NEGATIVE_MODES:
        raise ValueError(f"false_negatives must be one of {', '.join(FALSE_NEGATIVE_MODES)}, got '{false_negatives}'")
    if false_negatives == "keep":
        targets = labels
    elif positives is None:
        raise ValueError(f"false_negatives='{false_negatives}' needs the positives mask; none was given")
    elif false_negatives == "mask":
        others = positives.clone()
        others[torch.arange(len(labels), device=labels.device), labels] = False
        # exp(-inf) = 0: a masked column leaves the denominator and its logit gets an exactly zero gradient.
        logits_per_audio = logits_per_audio.masked_fill(others, -math.inf)
        logits_per_text = logits_per_text.masked_fill(others, -math.inf)
        targets = labels
    else:
        targets = positives.float() / positives.sum(dim=1, keepdim=True)  # [n, N], rows sum to 1
    return 0.5 * (F.cross_entropy(logits_per_audio, targets) + F.cross_entropy(logits_per_text, targets))


def compute_top1_accuracy(logits: Tensor, labels: Tensor, positives: Tensor | None = None) -> Tensor:
    """Return the detached fraction of rows whose largest logit is at its label (or, given
    `positives`, at any positive)."""
    best = logits.detach().argmax(dim=-1)  # [n]
    if positives is None:
        return (best == labels).float().mean()
    return positives.gather(1, best[:, None]).float().mean()


@dataclass
class ContrastiveOutput:
    """What one contrastive step yields."""

    loss: Tensor  # scalar to backpropagate; in local mode this rank's share (see ContrastiveObjective)
    a2t_acc: Tensor  # detached in-batch audio→text top-1 accuracy over the global batch
    t2a_acc: Tensor  # detached in-batch text→audio top-1 accuracy over the global batch
    global_batch_size: int  # pairs in the contrastive batch: world size × local batch


class ContrastiveObjective:
    """Symmetric InfoNCE whose negatives are every pair on every rank.

    Global mode gathers both modalities (with gradients) and builds the full
    ``[W*b, W*b]`` logits on every rank; memory O((W*b)^2). Local mode builds only this
    rank's rows against the gathered columns, ``[b, W*b]`` per direction with labels
    ``arange(b) + rank*b``; memory O(b * W*b). Both give, once DDP or DeepSpeed average
    parameter gradients over ranks, exactly the gradient of the single-process loss on
    the concatenated batch (the argument is in ``collectives._GatherWithGrad``):

    - global: every rank's loss *is* the single-process loss L; the gather's backward
      sums W identical contributions and the DDP average divides by W again;
    - local: rank r's loss is the mean over its own b rows, L_r, and L = mean_r L_r
      because all ranks hold b rows; the summed backward plus the DDP average
      differentiate exactly mean_r L_r. No rescaling by W is needed (or allowed).

    In local mode ``loss`` differs across ranks (its mean over ranks equals the global
    loss: log it with ``sync_dist=True``); the accuracies are those of this rank's rows
    against all columns, averaged over ranks by an all-reduce of two numbers, so they are
    the global-batch accuracies in both modes.

    With label-aware negatives the group keys are all-gathered beside the features (no
    gradient), so positives span every rank; each row's loss is still a function of that
    row and all columns, so the argument above holds unchanged. A row's top-1 then counts
    as correct when its best column is any of its positives.

    Args:
        use_local_loss: compute local rows against global columns instead of the full matrix.
        false_negatives: "keep", "mask" or "multi_positive" (see `symmetric_infonce`).
    """

    def __init__(self, use_local_loss: bool = False, false_negatives: str = "keep") -> None:
        if false_negatives not in FALSE_NEGATIVE_MODES:
            raise ValueError(f"false_negatives must be one of {', '.join(FALSE_NEGATIVE_MODES)}, "
                             f"got '{false_negatives}'")
        self.use_local_loss = use_local_loss
        self.false_negatives = false_negatives

    def __call__(self, audio_emb: Tensor, text_emb: Tensor, logit_scale: Tensor,
                 group_ids: Tensor | None = None) -> ContrastiveOutput:
        """Return the loss and accuracies for this rank's ``[b, D]`` audio and text embeddings.

        Args:
            group_ids: ``[b]`` or ``[b, K]`` integer keys of this rank's pairs; needed unless
                false_negatives is "keep" (and then ignored).
        """
        if audio_emb.shape != text_emb.shape:
            raise ValueError(
                f"audio and text embeddings must have the same shape [b, D]; "
                f"found {tuple(audio_emb.shape)} and {tuple(text_emb.shape)}"
            )
        local_batch, dim = audio_emb.shape
        # Normalise before the gather so no rank re-normalises (and stores) the gathered copies,
        # and gather both modalities at once: one size check and one backward all-reduce.
        local_pairs = torch.cat([normalize_embeddings(audio_emb), normalize_embeddings(text_emb)], dim=1)  # [b, 2D]
        local_audio, local_text = local_pairs.split(dim, dim=1)  # [b, D] each
        all_audio, all_text = gather_with_grad(local_pairs).split(dim, dim=1)  # [W*b, D] each
        if self.use_local_loss:
            logits_per_audio = compute_scaled_similarity(local_audio, all_text, logit_scale)  # [b, W*b]
            logits_per_text = compute_scaled_similarity(local_text, all_audio, logit_scale)  # [b, W*b]
            offset = rank() * local_batch
        else:
            logits_per_audio = compute_scaled_similarity(all_audio, all_text, logit_scale)  # [W*b, W*b]
            logits_per_text = logits_per_audio.T
            offset = 0
        labels = torch.arange(logits_per_audio.shape[0], device=audio_emb.device) + offset
        positives = None
        if self.false_negatives != "keep":
            if group_ids is None:
                raise ValueError(f"false_negatives='{self.false_negatives}' needs per-pair group ids; none were given")
            if len(group_ids) != local_batch:
                raise ValueError(f"{len(group_ids)} group ids for a batch of {local_batch} pairs")
            all_groups = gather_ids(group_ids.to(audio_emb.device))  # [W*b] or [W*b, K]
            row_groups = all_groups[offset : offset + logits_per_audio.shape[0]]
            positives = find_positives(row_groups, all_groups, labels)  # [rows, W*b]
        loss = symmetric_infonce(logits_per_audio, labels, logits_per_text, positives, self.false_negatives)
        accuracy = torch.stack([compute_top1_accuracy(logits_per_audio, labels, positives),
                                compute_top1_accuracy(logits_per_text, labels, positives)])
        if self.use_local_loss:
            accuracy = all_reduce_mean(accuracy)  # equal b on every rank, so the mean is the global accuracy
        return ContrastiveOutput(
            loss=loss, a2t_acc=accuracy[0], t2a_acc=accuracy[1], global_batch_size=all_audio.shape[0]
        )
