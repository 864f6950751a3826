"""Evaluation metrics against hand-computed cases, a brute-force reference and torchmetrics."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision, MultilabelF1Score
from torchmetrics.functional.retrieval import retrieval_average_precision
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP, RetrievalRecall

from clap_lightning.eval.metrics import (
    accuracy,
    audio_to_text_map_at_10,
    f1_at_threshold,
    mean_average_precision,
    retrieval_metrics,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- accuracy


def test_accuracy_top1_and_top2_by_hand():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    targets = torch.tensor([1, 1, 2, 2])
    # Top-1 picks 1, 0, 2, 0: rows 0 and 2 are right.
    assert accuracy(logits, targets) == pytest.approx(0.5)
    # Top-2 sets {1,2}, {0,1}, {2,1}, {0,2}: all four contain the target.
    assert accuracy(logits, targets, top_k=2) == pytest.approx(1.0)


def test_accuracy_counts_ties_against_the_target():
    # A collapsed model (all scores equal) must not score as a perfect one.
    assert accuracy(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])) == 0.0
    # Target tied with one other class: rank 1, a miss at top-1, a hit at top-2.
    logits = torch.tensor([[1.0, 1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0])) == 0.0
    assert accuracy(logits, torch.tensor([0]), top_k=2) == 1.0


@pytest.mark.parametrize("top_k", [1, 3])
def test_accuracy_matches_torchmetrics(top_k):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=generator)
    targets = torch.randint(0, 10, (200,), generator=generator)
    reference = MulticlassAccuracy(num_classes=10, top_k=top_k, average="micro")(logits, targets)
    assert accuracy(logits, targets, top_k=top_k) == pytest.approx(reference.item(), abs=1e-6)


def test_accuracy_rejects_bad_inputs():
    with pytest.raises(ValueError, match="targets must be class indices"):
        accuracy(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"expected logits \[N, C\]"):
        accuracy(torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="top_k"):
        accuracy(torch.randn(2, 3), torch.tensor([0, 1]), top_k=4)


# --------------------------------------------------------------------------- mAP


def test_map_by_hand_skips_classes_without_positives():
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.8, 0.7, 0.1], [0.3, 0.6, 0.4], [0.1, 0.4, 0.3]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]])
    # Class 0 ranked +,-,+,- : AP = (1/1 + 2/3) / 2 = 0.8333.
    # Class 1 ranked -,+,+,- : AP = (1/2 + 2/3) / 2 = 0.5833.
    # Class 2 has no positive: left out, so mAP = (0.8333 + 0.5833) / 2 = 0.7083.
    assert mean_average_precision(scores, targets) == pytest.approx(0.708333, abs=1e-5)
    # torchmetrics counts the empty class as AP 0 and averages it in: (0.8333 + 0.5833 + 0) / 3.
    with pytest.warns(UserWarning, match="No positive samples"):
        torchmetrics_macro = MultilabelAveragePrecision(num_labels=3, average="macro")(scores, targets)
    assert torchmetrics_macro.item() == pytest.approx(0.472222, abs=1e-5)


def test_map_matches_torchmetrics_when_every_class_has_positives():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(64, 7, generator=generator)
    targets = (torch.rand(64, 7, generator=generator) < 0.3).long()
    targets[0] = 1  # every class has at least one positive
    reference = MultilabelAveragePrecision(num_labels=7, average="macro")(scores.sigmoid(), targets)
    assert mean_average_precision(scores, targets) == pytest.approx(reference.item(), abs=1e-6)
    # AP depends on the order only: logits and sigmoid probabilities agree.
    assert mean_average_precision(scores.sigmoid(), targets) == pytest.approx(reference.item(), abs=1e-6)


def test_map_without_any_positive_is_an_error():
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(torch.rand(3, 2), torch.zeros(3, 2))


# --------------------------------------------------------------------------- F1


def test_f1_by_hand_is_micro_over_clip_class_decisions():
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.4, 0.8, 0.7], [0.1, 0.3, 0.6]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    # Predicted (>= 0.5): (0,0) (0,2) (1,1) (1,2) (2,2); the 0.5 at (0,2) counts as predicted.
    # TP = (0,0) (1,1) (2,2) = 3; FP = (0,2) (1,2) = 2; FN = (1,0) = 1.
    # P = 3/5, R = 3/4, F1 = 2PR/(P+R) = 2*3 / (2*3 + 2 + 1) = 0.6667.
    assert f1_at_threshold(scores, targets) == pytest.approx(2 / 3)
    # At 0.75 only (0,0) and (1,1) are predicted: TP 2, FP 0, FN 2 -> F1 = 4 / 6.
    assert f1_at_threshold(scores, targets, threshold=0.75) == pytest.approx(4 / 6)
    assert f1_at_threshold(scores, torch.zeros(3, 3), threshold=1.0) == 0.0


def test_f1_matches_torchmetrics_micro():
    generator = torch.Generator().manual_seed(2)
    scores = torch.rand(100, 17, generator=generator)
    targets = (torch.rand(100, 17, generator=generator) < 0.2).long()
    for threshold in (0.3, 0.5, 0.8):
        reference = MultilabelF1Score(num_labels=17, threshold=threshold, average="micro")(scores, targets)
        assert f1_at_threshold(scores, targets, threshold) == pytest.approx(reference.item(), abs=1e-6)


def test_f1_refuses_logits():
    with pytest.raises(ValueError, match="apply sigmoid first"):
        f1_at_threshold(torch.tensor([[2.0, -1.0]]), torch.tensor([[1, 0]]))


# --------------------------------------------------------------------------- retrieval


def test_audio_to_text_map_sorts_caption_ranks():
    ranks = torch.tensor([3, 0, 4, 2, 5])
    # Sorted ranks 0, 2, 3, 4, 5 -> precisions 1/1, 2/3, 3/4, 4/5, 5/6 -> sum 4.05 / 5 = 0.81.
    assert audio_to_text_map_at_10(ranks).item() == pytest.approx(0.81)
    # LAION-CLAP pairs the unsorted ranks with positions 1..5 and exceeds 1:
    laion = sum((i + 1) / (r + 1) for i, r in enumerate(ranks.tolist())) / 5
    assert laion == pytest.approx(1.003, abs=1e-3)


def test_audio_to_text_map_cutoff_and_padding():
    # Ranks 1 and 9 hit (1/2 + 2/10), 10 and 30 do not; divided by all 4 captions.
    assert audio_to_text_map_at_10(torch.tensor([10, 1, 30, 9])).item() == pytest.approx(0.7 / 4)
    ranks = torch.tensor([[0, 2, 7], [4, 99, 0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    # Clip 0 has two captions: (1/1 + 2/3) / 2. Clip 1: sorted 0, 4, 99 -> (1/1 + 2/5) / 3.
    expected = torch.tensor([(1 + 2 / 3) / 2, (1 + 2 / 5) / 3], dtype=torch.float64)
    torch.testing.assert_close(audio_to_text_map_at_10(ranks, valid), expected)


def _ranked_similarity() -> tuple[torch.Tensor, torch.Tensor]:
    """3 clips x 5 captions; each row scores texts 15 - rank, with the ranks chosen below."""
    row_ranks = [
        # clip 0's captions (texts 0-4) at ranks 3, 0, 4, 2, 5 -- the sorting case.
        [3, 0, 4, 2, 5, 1, 6, 7, 8, 9, 10, 11, 12, 13, 14],
        # clip 1's captions (texts 5-9) at ranks 10-14: none in the top 10.
        [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 5, 6, 7, 8, 9],
        # clip 2's captions (texts 10-14) at ranks 1, 6, 7, 8, 9.
        [0, 2, 3, 4, 5, 10, 11, 12, 13, 14, 1, 6, 7, 8, 9],
    ]
    sim = 15.0 - torch.tensor(row_ranks, dtype=torch.float32)
    return sim, torch.arange(15) // 5


def test_retrieval_by_hand_five_captions_per_clip():
    sim, text_to_audio = _ranked_similarity()
    metrics = retrieval_metrics(sim, text_to_audio)
    # audio->text best caption ranks: 0, 10, 1 -> R@1 1/3, R@5 2/3, R@10 2/3.
    assert metrics["a2t_r@1"] == pytest.approx(1 / 3)
    assert metrics["a2t_r@5"] == pytest.approx(2 / 3)
    assert metrics["a2t_r@10"] == pytest.approx(2 / 3)
    # AP@10: clip 0 = 0.81; clip 1 = 0; clip 2 sorted 1,6,7,8,9 -> (1/2 + 2/7 + 3/8 + 4/9 + 5/10) / 5.
    clip2 = (1 / 2 + 2 / 7 + 3 / 8 + 4 / 9 + 5 / 10) / 5
    assert metrics["a2t_mAP@10"] == pytest.approx((0.81 + 0 + clip2) / 3)
    # text->audio: columns of `sim` give ranks [2,0,2,0,2, 2,2,2,2,2, 0,1,1,1,1] (ties, e.g.
    # text 4 scores 10 for clips 0 and 2, count against the caption's own clip).
    assert metrics["t2a_r@1"] == pytest.approx(3 / 15)
    assert metrics["t2a_r@5"] == pytest.approx(1.0)
    assert metrics["t2a_r@10"] == pytest.approx(1.0)
    assert metrics["t2a_mAP@10"] == pytest.approx((3 * 1 + 4 / 2 + 8 / 3) / 15)


def test_retrieval_is_invariant_to_caption_order():
    sim, text_to_audio = _ranked_similarity()
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    assert retrieval_metrics(sim[:, perm], text_to_audio[perm]) == pytest.approx(retrieval_metrics(sim, text_to_audio))


def _brute_force_retrieval(sim: torch.Tensor, text_to_audio: torch.Tensor) -> dict[str, float]:
    """Loop-by-loop reference for LAION-CLAP's retrieval metrics (train.py,
    evaluate_clotho_audiocaps; tie-free input)."""
    n_audio, n_text = sim.shape
    out = {}
    t2a_ranks = [int((sim[:, j] > sim[text_to_audio[j], j]).sum()) for j in range(n_text)]
    for k in (1, 5, 10):
        out[f"t2a_r@{k}"] = sum(r < k for r in t2a_ranks) / n_text
    out["t2a_mAP@10"] = sum(1 / (r + 1) for r in t2a_ranks if r < 10) / n_text
    best, aps = [], []
    for i in range(n_audio):
        order = torch.argsort(sim[i], descending=True).tolist()
        ranks = sorted(order.index(j) for j in range(n_text) if text_to_audio[j] == i)
        best.append(ranks[0])
        aps.append(sum((pos + 1) / (r + 1) for pos, r in enumerate(ranks) if r < 10) / len(ranks))
    for k in (1, 5, 10):
        out[f"a2t_r@{k}"] = sum(r < k for r in best) / n_audio
    out["a2t_mAP@10"] = sum(aps) / n_audio
    return out


def test_retrieval_matches_brute_force_with_uneven_caption_counts():
    generator = torch.Generator().manual_seed(4)
    text_to_audio = torch.cat([torch.arange(30), torch.randint(0, 30, (60,), generator=generator)])
    sim = torch.randn(30, 90, generator=generator)
    assert retrieval_metrics(sim, text_to_audio) == pytest.approx(_brute_force_retrieval(sim, text_to_audio))


def _flat_retrieval_inputs(scores: torch.Tensor, relevant: torch.Tensor):
    """Query-major flattening for torchmetrics' retrieval metrics."""
    indexes = torch.arange(scores.shape[0])[:, None].expand_as(scores)
    return scores.flatten(), relevant.flatten(), indexes.flatten()


def test_retrieval_matches_torchmetrics_five_captions_per_clip():
    generator = torch.Generator().manual_seed(5)
    n_audio = 40
    text_to_audio = torch.arange(n_audio).repeat_interleave(5)  # [200]
    # Positive scores: torchmetrics 1.9 ignores relevant items whose score is <= 0.
    sim = torch.rand(n_audio, 5 * n_audio, generator=generator) + 0.01
    relevant = text_to_audio[None, :] == torch.arange(n_audio)[:, None]  # [n_audio, n_text]
    metrics = retrieval_metrics(sim, text_to_audio)

    t2a = _flat_retrieval_inputs(sim.T, relevant.T)
    a2t = _flat_retrieval_inputs(sim, relevant)
    for k in (1, 5, 10):
        assert metrics[f"t2a_r@{k}"] == pytest.approx(RetrievalRecall(top_k=k)(*t2a).item(), abs=1e-6)
        # "best-ranked of the clip's captions within k" is torchmetrics' hit rate.
        assert metrics[f"a2t_r@{k}"] == pytest.approx(RetrievalHitRate(top_k=k)(*a2t).item(), abs=1e-6)
    assert metrics["t2a_mAP@10"] == pytest.approx(RetrievalMAP(top_k=10)(*t2a).item(), abs=1e-6)
    # torchmetrics' AP@10 divides by the hits found in the top 10; ours by the 5 captions.
    rescaled = []
    for i in range(n_audio):
        hits = int(relevant[i][sim[i].topk(10).indices].sum())
        rescaled.append(retrieval_average_precision(sim[i], relevant[i], top_k=10).item() * hits / 5)
    assert metrics["a2t_mAP@10"] == pytest.approx(sum(rescaled) / n_audio, abs=1e-6)


def test_retrieval_rejects_clips_without_captions_and_bad_shapes():
    with pytest.raises(ValueError, match="audio 2 has none"):
        retrieval_metrics(torch.rand(3, 4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="expected sim"):
        retrieval_metrics(torch.rand(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="finite"):
        retrieval_metrics(torch.tensor([[float("nan")]]), torch.tensor([0]))
