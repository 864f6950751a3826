"""Evaluation metrics as pure functions on tensors: classification, tagging and retrieval.

Ranks are 0-based and ties are broken pessimistically: an item's rank counts every other
item scored strictly higher *or equal*. So a collapsed model whose scores are all equal
gets accuracy 0 and R@k 0 instead of a perfect score, and the result never depends on
the order of the rows.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import multilabel_average_precision

RETRIEVAL_KS = (1, 5, 10)  # the R@k cut-offs reported for AudioCaps / Clotho
MAP_CUTOFF = 10  # mAP@10, the DCASE language-based retrieval metric


def _check_finite(name: str, values: Tensor) -> None:
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} must be finite; found NaN or inf")


def _as_float(values: Tensor) -> Tensor:
    """Upcast half precision to float32 (fewer spurious ties); keep float32/float64 as they are."""
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def _finite_float(name: str, values: Tensor) -> Tensor:
    """Return `values` via `_as_float`, raising if any is NaN or inf."""
    values = _as_float(values)
    _check_finite(name, values)
    return values


def _as_indices(name: str, values: Tensor, upper: int, must: str) -> Tensor:
    """Return `values` as long, raising "<name> must <must> in [0, upper)" if any lies outside."""
    values = values.long()
    if values.min() < 0 or values.max() >= upper:
        found = f"{values.min()}..{values.max()}"
        raise ValueError(f"{name} must {must} in [0, {upper}); found {found}")
    return values


def _check_scores_and_targets(scores: Tensor, targets: Tensor) -> Tensor:
    """Check `[N, C]` scores against same-shape targets; return the scores as floats."""
    if scores.ndim != 2 or scores.shape != targets.shape:
        shapes = f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        raise ValueError(f"expected scores and targets of the same [N, C] shape; got {shapes}")
    return _finite_float("scores", scores)


def _pessimistic_ranks(scores: Tensor, query_scores: Tensor) -> Tensor:
    """Rank of each query score within its row of `scores`, counting ties against it.

    Args:
        scores: `[Q, N]` scores of every candidate, one row per query.
        query_scores: `[Q, K]` scores of items that appear in the same row of `scores`.

    Returns:
        `[Q, K]` long: number of *other* candidates in the row scored >= the item.
    """
    sorted_scores = scores.sort(dim=1).values.contiguous()  # ascending, [Q, N]
    n_below = torch.searchsorted(sorted_scores, query_scores.contiguous(), right=False)
    return scores.shape[1] - n_below - 1  # items >= it, minus itself


def accuracy(logits: Tensor, targets: Tensor, top_k: int = 1) -> float:
    """Return the fraction of rows whose target class is among the `top_k` highest scores.

    Args:
        logits: `[N, C]` scores (logits, probabilities or similarities: only the order matters).
        targets: `[N]` class indices in `[0, C)`.
        top_k: how many of the best-scored classes count as a hit.
    """
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        shapes = f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        raise ValueError(f"expected logits [N, C] and targets [N]; got {shapes}")
    n, n_classes = logits.shape
    if n == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    if not 1 <= top_k <= n_classes:
        raise ValueError(f"top_k must be in [1, {n_classes}]; got {top_k}")
    targets = _as_indices("targets", targets, n_classes, "be class indices")
    logits = _finite_float("logits", logits)
    target_logit = logits.gather(1, targets[:, None])  # [N, 1]
    ranks = _pessimistic_ranks(logits, target_logit)[:, 0]
    return (ranks < top_k).double().mean().item()


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Return macro mAP over the classes that have at least one positive.

    torchmetrics' `MultilabelAveragePrecision(average="macro")` scores a class with no
    positive as AP 0 and still averages it in (torchmetrics 1.9 warns "No positive samples
    found in target"), which lowers mAP by the share of empty classes. That is an artefact
    of the eval subset, not of the model, so such classes are dropped before averaging; on
    the remaining columns the value is exactly torchmetrics' (ties handled as in sklearn).

    Args:
        scores: `[N, C]` scores; sigmoid probabilities or raw logits give the same AP
            because AP depends on the order only.
        targets: `[N, C]` multi-hot (0/1 or bool).

    Raises:
        ValueError: shapes differ, or no class has a positive.
    """
    scores = _check_scores_and_targets(scores, targets)
    targets = targets.long()
    if ((targets != 0) & (targets != 1)).any():
        raise ValueError("targets must be multi-hot (0/1)")
    has_positive = targets.sum(dim=0) > 0  # [C]
    n_kept = int(has_positive.sum())
    if n_kept == 0:
        raise ValueError("mAP is undefined: no class has a positive target")
    value = multilabel_average_precision(
        scores[:, has_positive], targets[:, has_positive], num_labels=n_kept, average="macro", thresholds=None
    )
    return value.item()


def f1_at_threshold(scores: Tensor, targets: Tensor, threshold: float = 0.5) -> float:
    """Return DCASE2017 Task 4 (subtask A, audio tagging) F1: micro-averaged over clip x class decisions.

    A class is predicted for a clip when its probability is >= `threshold`. True positives,
    false positives and false negatives are summed over every clip and class, then
    F1 = 2 TP / (2 TP + FP + FN), which equals 2PR / (P + R), and 0 when nothing is
    predicted or present. This is the "Micro Average or Instance Based" score the challenge
    ranked systems by (`evaluation/Models.py:computeMetricsString` in the official Task 4
    repository, ankitshah009/Task-4-Large-scale-weakly-supervised-sound-event-detection-for-smart-cars).
    The default 0.5 and the `>=` comparison are the baseline system's global threshold
    (`task4.defaults.yaml: recognizer.frame_binarization`, applied by dcase_util's
    `ProbabilityEncoder.binarization`). The CLAP paper does not say which threshold it used
    for its zero-shot 0.466, so results at 0.5 are our protocol, not necessarily theirs.

    Args:
        scores: `[N, C]` probabilities in [0, 1] (apply sigmoid to logits first).
        targets: `[N, C]` multi-hot (0/1 or bool).
        threshold: probability at or above which a class counts as predicted.
    """
    scores = _check_scores_and_targets(scores, targets)
    if scores.min() < 0 or scores.max() > 1:
        found = f"{scores.min():.3g}..{scores.max():.3g}"
        raise ValueError(f"scores must be probabilities in [0, 1] (apply sigmoid first); found {found}")
    predicted = scores >= threshold
    present = targets.bool()
    tp = (predicted & present).sum().item()
    fp = (predicted & ~present).sum().item()
    fn = (~predicted & present).sum().item()
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def audio_to_text_map_at_10(ranks: Tensor, valid: Tensor | None = None, cutoff: int = MAP_CUTOFF) -> Tensor:
    """Return audio->text AP@10 per clip from the 0-based ranks of its reference captions.

    The ranks are sorted first, so the i-th best caption (0-based) found at rank r scores
    precision (i + 1) / (r + 1); hits at rank >= `cutoff` score 0, and the sum is divided
    by the clip's number of captions (5 for AudioCaps / Clotho). LAION-CLAP's
    `evaluate_clotho_audiocaps` skips the sort and pairs each caption's rank with its
    position in the caption list, which can exceed 1: for ranks [3, 0, 4, 2, 5] it gives
    (1/4 + 2/1 + 3/5 + 4/3 + 5/6) / 5 = 1.003, against the correct 0.81.

    Args:
        ranks: `[n_audio, K]` (or `[K]` for one clip) long, each caption's rank among all texts.
        valid: `[n_audio, K]` bool marking real captions when clips have fewer than K
            (padding entries are ignored); None means every entry is a caption.
        cutoff: the k of mAP@k.

    Returns:
        `[n_audio]` float (a 0-dim tensor for `[K]` input).
    """
    squeeze = ranks.ndim == 1
    ranks = ranks[None] if squeeze else ranks
    valid = torch.ones_like(ranks, dtype=torch.bool) if valid is None else (valid[None] if squeeze else valid).bool()
    if valid.shape != ranks.shape:
        raise ValueError(f"valid must match ranks' shape {tuple(ranks.shape)}; got {tuple(valid.shape)}")
    n_captions = valid.sum(dim=1)  # [n_audio]
    if (n_captions == 0).any():
        raise ValueError("every clip needs at least one caption rank")
    # Padding sorts last (rank = +inf-like), so real captions occupy positions 0..n-1.
    padded = torch.where(valid, ranks.long(), torch.iinfo(torch.long).max)
    sorted_ranks = padded.sort(dim=1).values
    position = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)  # [K]
    hit = sorted_ranks < cutoff
    precision = torch.where(hit, position / (sorted_ranks.clamp(max=cutoff).double() + 1), 0.0)
    ap = precision.sum(dim=1) / n_captions.double()
    return ap[0] if squeeze else ap


def _captions_by_audio(text_to_audio: Tensor, n_audio: int) -> tuple[Tensor, Tensor]:
    """Group caption indices by clip: `[n_audio, K]` index matrix (K = most captions of a clip) and validity mask."""
    counts = torch.bincount(text_to_audio, minlength=n_audio)  # [n_audio]
    if (counts == 0).any():
        missing = int((counts == 0).nonzero()[0])
        raise ValueError(f"every audio needs at least one caption; audio {missing} has none")
    order = torch.argsort(text_to_audio, stable=True)  # caption indices grouped by clip
    starts = torch.cumsum(counts, 0) - counts  # first slot of each clip in `order`
    owner = text_to_audio[order]
    slot = torch.arange(len(order), device=order.device) - starts[owner]
    index = torch.full((n_audio, int(counts.max())), -1, dtype=torch.long, device=order.device)
    index[owner, slot] = order
    return index.clamp(min=0), index >= 0


def retrieval_metrics(sim: Tensor, text_to_audio: Tensor) -> dict[str, float]:
    """Return R@1/5/10 and mAP@10 in both directions for a caption set with several captions per clip.

    Follows LAION-CLAP `train.py:evaluate_clotho_audiocaps` (after Mei's code), with the
    audio->text mAP@10 fixed to sort caption ranks (see `audio_to_text_map_at_10`):
    - text->audio: every caption is a query with one relevant clip; R@k = rank < k;
      mAP@10 = mean of 1 / (rank + 1) over captions, 0 when rank >= 10.
    - audio->text: every clip is a query whose relevant items are its captions; R@k uses
      the best-ranked caption; mAP@10 as in `audio_to_text_map_at_10`.

    Args:
        sim: `[n_audio, n_text]` similarities (higher is closer).
        text_to_audio: `[n_text]` long, the clip each caption describes.

    Returns:
        keys `t2a_r@1`, `t2a_r@5`, `t2a_r@10`, `t2a_mAP@10`, `a2t_r@1`, `a2t_r@5`, `a2t_r@10`, `a2t_mAP@10`.
    """
    if sim.ndim != 2 or text_to_audio.shape != (sim.shape[1],):
        shapes = f"{tuple(sim.shape)} and {tuple(text_to_audio.shape)}"
        raise ValueError(f"expected sim [n_audio, n_text] and text_to_audio [n_text]; got {shapes}")
    n_audio, _ = sim.shape
    text_to_audio = _as_indices("text_to_audio", text_to_audio, n_audio, "index clips")
    sim = _finite_float("sim", sim)

    # text->audio: rank of each caption's own clip within its column.
    sim_t2a = sim.T  # [n_text, n_audio]
    t2a_ranks = _pessimistic_ranks(sim_t2a, sim_t2a.gather(1, text_to_audio[:, None]))[:, 0]
    # audio->text: ranks of each clip's captions within its row.
    caption_index, valid = _captions_by_audio(text_to_audio, n_audio)
    a2t_ranks = _pessimistic_ranks(sim, sim.gather(1, caption_index))  # [n_audio, K]
    best_a2t = torch.where(valid, a2t_ranks, torch.iinfo(torch.long).max).min(dim=1).values

    metrics: dict[str, float] = {}
    for k in RETRIEVAL_KS:
        metrics[f"t2a_r@{k}"] = (t2a_ranks < k).double().mean().item()
    t2a_ap = torch.where(t2a_ranks < MAP_CUTOFF, 1.0 / (t2a_ranks.double() + 1), 0.0)
    metrics[f"t2a_mAP@{MAP_CUTOFF}"] = t2a_ap.mean().item()
    for k in RETRIEVAL_KS:
        metrics[f"a2t_r@{k}"] = (best_a2t < k).double().mean().item()
    metrics[f"a2t_mAP@{MAP_CUTOFF}"] = audio_to_text_map_at_10(a2t_ranks, valid).mean().item()
    return metrics
