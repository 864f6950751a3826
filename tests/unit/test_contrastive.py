"""Unit tests for the symmetric InfoNCE loss (plain and label-aware), logit-scale clamp, fp32 logits
and the world-of-one gather."""

import math

import numpy as np
import pytest
import torch

from clap_lightning.objectives import (
    MAX_LOG_LOGIT_SCALE,
    ContrastiveObjective,
    compute_logits,
    find_positives,
    gather_with_grad,
    rank,
    symmetric_infonce,
    world_size,
)

torch.set_num_threads(1)


def reference_loss(audio: np.ndarray, text: np.ndarray, log_scale: float) -> float:
    """Symmetric InfoNCE written out with loops in float64, independent of torch."""
    scale = math.exp(min(max(log_scale, 0.0), math.log(100.0)))
    audio = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    n = len(audio)
    sim = [[scale * float(np.dot(audio[i], text[j])) for j in range(n)] for i in range(n)]
    a2t = t2a = 0.0
    for i in range(n):
        a2t -= sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(n)))
        t2a -= sim[i][i] - math.log(sum(math.exp(sim[j][i]) for j in range(n)))
    return 0.5 * (a2t / n + t2a / n)


def random_pairs(batch: int = 6, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=generator), torch.randn(batch, dim, generator=generator)


@pytest.mark.parametrize("log_scale", [0.3, math.log(1 / 0.07), 5.0, -1.0])
@pytest.mark.parametrize("use_local_loss", [False, True])
def test_loss_matches_explicit_reference(log_scale: float, use_local_loss: bool) -> None:
    audio, text = random_pairs(batch=7, dim=5, seed=1)
    expected = reference_loss(audio.double().numpy(), text.double().numpy(), log_scale)
    out = ContrastiveObjective(use_local_loss=use_local_loss)(audio, text, torch.tensor([log_scale]))
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert out.global_batch_size == 7


def test_loss_is_symmetric_in_the_modalities() -> None:
    audio, text = random_pairs(seed=2)
    scale = torch.tensor([2.0])
    objective = ContrastiveObjective()
    assert objective(audio, text, scale).loss.item() == pytest.approx(
        objective(text, audio, scale).loss.item(), rel=1e-6
    )
    logits = compute_logits(audio, text, scale)
    labels = torch.arange(len(audio))
    a2t = torch.nn.functional.cross_entropy(logits, labels)
    t2a = torch.nn.functional.cross_entropy(logits.T, labels)
    assert symmetric_infonce(logits, labels).item() == pytest.approx(0.5 * (a2t + t2a).item(), rel=1e-6)
    assert a2t.item() != pytest.approx(t2a.item(), rel=1e-3)  # the two directions really differ here


def test_perfect_alignment_gives_low_loss_and_full_accuracy() -> None:
    audio, _ = random_pairs(batch=8, dim=64, seed=3)
    out = ContrastiveObjective()(audio, audio.clone(), torch.tensor([MAX_LOG_LOGIT_SCALE]))
    assert out.loss.item() < 1e-3
    assert out.a2t_acc.item() == 1.0 and out.t2a_acc.item() == 1.0
    mismatched = ContrastiveObjective()(audio, audio.roll(1, dims=0), torch.tensor([MAX_LOG_LOGIT_SCALE]))
    assert mismatched.loss.item() > 10.0
    assert mismatched.a2t_acc.item() == 0.0 and mismatched.t2a_acc.item() == 0.0


def test_accuracy_counts_rows_whose_best_column_is_the_pair() -> None:
    text = torch.eye(4)
    audio = torch.eye(4)[[0, 1, 3, 2]]  # rows 2 and 3 point at each other's captions
    out = ContrastiveObjective()(audio, text, torch.tensor([1.0]))
    assert out.a2t_acc.item() == 0.5 and out.t2a_acc.item() == 0.5
    assert not out.a2t_acc.requires_grad


@pytest.mark.parametrize(
    ("raw", "expected_scale", "has_grad"),
    [(10.0, 100.0, False), (MAX_LOG_LOGIT_SCALE + 1e-3, 100.0, False), (-2.0, 1.0, False), (2.0, math.exp(2.0), True)],
)
def test_logit_scale_is_clamped_to_one_and_hundred(raw: float, expected_scale: float, has_grad: bool) -> None:
    audio, text = random_pairs(seed=4)
    logit_scale = torch.tensor([raw], requires_grad=True)
    logits = compute_logits(audio, text, logit_scale)
    unit = compute_logits(audio, text, torch.tensor([0.0]))  # scale exp(0) = 1: plain cosines
    torch.testing.assert_close(logits.detach(), expected_scale * unit, rtol=1e-5, atol=1e-5)
    symmetric_infonce(logits, torch.arange(len(audio))).backward()
    assert logit_scale.grad is not None and logit_scale.grad.shape == (1,)
    assert (logit_scale.grad.abs().item() > 1e-4) == has_grad


def test_logits_are_float32_under_bf16_autocast() -> None:
    audio, text = random_pairs(batch=4, dim=16, seed=5)
    audio_bf16, text_bf16 = audio.bfloat16().requires_grad_(), text.bfloat16()
    weight = torch.randn(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (audio @ weight).dtype == torch.bfloat16  # autocast really is on: a plain matmul drops to bf16
        logits = compute_logits(audio_bf16, text_bf16, torch.tensor([3.0]))
        out = ContrastiveObjective()(audio_bf16, text_bf16, torch.tensor([3.0]))
    assert logits.dtype == torch.float32 and out.loss.dtype == torch.float32
    torch.testing.assert_close(logits, compute_logits(audio_bf16.float(), text_bf16.float(), torch.tensor([3.0])))
    out.loss.backward()
    assert audio_bf16.grad is not None and audio_bf16.grad.dtype == torch.bfloat16


def test_world_of_one_gather_is_identity() -> None:
    assert world_size() == 1 and rank() == 0
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


def test_local_loss_equals_global_loss_in_a_world_of_one() -> None:
    audio, text = random_pairs(seed=6)
    scale = torch.tensor([2.5])
    global_out = ContrastiveObjective(use_local_loss=False)(audio, text, scale)
    local_out = ContrastiveObjective(use_local_loss=True)(audio, text, scale)
    assert local_out.loss.item() == pytest.approx(global_out.loss.item(), rel=1e-6)


def test_mismatched_embedding_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"same shape \[b, D\]; found \(4, 8\) and \(4, 6\)"):
        ContrastiveObjective()(torch.randn(4, 8), torch.randn(4, 6), torch.tensor([1.0]))


# ---------------------------------------------------------------------------------------
# Label-aware negatives (objective.false_negatives)

def reference_label_aware_loss(audio: np.ndarray, text: np.ndarray, log_scale: float, groups: list[int],
                               mode: str) -> float:
    """Mask / multi-positive symmetric InfoNCE written out with loops in float64, independent of torch."""
    scale = math.exp(log_scale)
    audio = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    n = len(audio)
    sim = [[scale * float(np.dot(audio[i], text[j])) for j in range(n)] for i in range(n)]
    total = 0.0
    for direction in (sim, [list(col) for col in zip(*sim)]):  # audio rows, then text rows
        for i in range(n):
            positives = [j for j in range(n) if groups[j] == groups[i]]
            if mode == "mask":  # denominator: the pair itself and every other group
                columns = [j for j in range(n) if j == i or groups[j] != groups[i]]
                total -= direction[i][i] - math.log(sum(math.exp(direction[i][j]) for j in columns))
            else:  # the target spread evenly over the positives
                log_z = math.log(sum(math.exp(direction[i][j]) for j in range(n)))
                total -= sum(direction[i][j] - log_z for j in positives) / len(positives)
    return 0.5 * total / n


GROUPS = [0, 1, 0, 2, 1, 0, 3]  # pairs 0, 2, 5 share a class; so do 1 and 4


@pytest.mark.parametrize("mode", ["mask", "multi_positive"])
@pytest.mark.parametrize("use_local_loss", [False, True])
def test_label_aware_loss_matches_explicit_reference(mode: str, use_local_loss: bool) -> None:
    audio, text = random_pairs(batch=7, dim=5, seed=11)
    expected = reference_label_aware_loss(audio.double().numpy(), text.double().numpy(), 2.0, GROUPS, mode)
    out = ContrastiveObjective(use_local_loss, mode)(audio, text, torch.tensor([2.0]), torch.tensor(GROUPS))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    plain = ContrastiveObjective(use_local_loss)(audio, text, torch.tensor([2.0])).loss.item()
    assert out.loss.item() != pytest.approx(plain, rel=1e-3)  # the shared groups really change the loss


@pytest.mark.parametrize("mode", ["mask", "multi_positive"])
@pytest.mark.parametrize("use_local_loss", [False, True])
def test_label_aware_loss_equals_plain_loss_when_all_groups_differ(mode: str, use_local_loss: bool) -> None:
    audio, text = random_pairs(batch=6, dim=5, seed=12)
    audio.requires_grad_()
    scale = torch.tensor([2.5])
    distinct = torch.tensor([[10, 11], [20, 21], [30, 31], [40, 41], [50, 51], [60, 61]])  # [b, K=2] keys
    plain = ContrastiveObjective(use_local_loss)(audio, text, scale)
    (plain_grad,) = torch.autograd.grad(plain.loss, audio)
    aware = ContrastiveObjective(use_local_loss, mode)(audio, text, scale, distinct)
    (aware_grad,) = torch.autograd.grad(aware.loss, audio)
    assert aware.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    torch.testing.assert_close(aware_grad, plain_grad, rtol=1e-5, atol=1e-7)
    assert (aware.a2t_acc.item(), aware.t2a_acc.item()) == (plain.a2t_acc.item(), plain.t2a_acc.item())


def test_keep_ignores_group_ids() -> None:
    audio, text = random_pairs(seed=13)
    scale = torch.tensor([2.0])
    same = torch.zeros(len(audio), dtype=torch.int64)  # every pair in one group
    assert ContrastiveObjective()(audio, text, scale, same).loss.item() == ContrastiveObjective()(
        audio, text, scale).loss.item()


def test_masked_pairs_get_zero_gradient_and_the_rest_do_not() -> None:
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(14), requires_grad=True)
    labels = torch.arange(5)
    groups = torch.tensor([0, 1, 0, 2, 1])
    positives = find_positives(groups, groups, labels)
    symmetric_infonce(logits, labels, positives=positives, false_negatives="mask").backward()
    masked = positives & ~torch.eye(5, dtype=torch.bool)  # (0,2), (2,0), (1,4), (4,1)
    assert masked.sum().item() == 4
    assert torch.all(logits.grad[masked] == 0)  # exactly zero, not merely small
    assert torch.all(logits.grad[~masked] != 0)
    assert torch.isfinite(logits.grad).all()


def test_pairs_sharing_either_key_are_positives() -> None:
    # [caption key, label-set key]: 0 and 1 share a caption, 1 and 2 a label set, 3 shares nothing
    groups = torch.tensor([[7, 100], [7, 200], [8, 200], [9, 300]])
    positives = find_positives(groups, groups, torch.arange(4))
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(positives, expected)
    local = find_positives(groups[2:], groups, torch.arange(2) + 2)  # local rows 2, 3 against all columns
    assert torch.equal(local, expected[2:])


def test_label_aware_accuracy_counts_any_positive_column() -> None:
    text = torch.eye(4)
    audio = torch.eye(4)[[2, 1, 0, 3]]  # audio 0 and 2 each point at the other's caption: same class
    groups = torch.tensor([0, 1, 0, 2])
    assert ContrastiveObjective()(audio, text, torch.tensor([1.0])).a2t_acc.item() == 0.5
    for mode in ("mask", "multi_positive"):
        out = ContrastiveObjective(False, mode)(audio, text, torch.tensor([1.0]), groups)
        assert out.a2t_acc.item() == 1.0 and out.t2a_acc.item() == 1.0


def test_label_aware_modes_need_group_ids_and_a_known_mode() -> None:
    audio, text = random_pairs(batch=4)
    with pytest.raises(ValueError, match="false_negatives='mask' needs per-pair group ids"):
        ContrastiveObjective(False, "mask")(audio, text, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="3 group ids for a batch of 4 pairs"):
        ContrastiveObjective(False, "mask")(audio, text, torch.tensor([1.0]), torch.arange(3))
    with pytest.raises(ValueError, match="false_negatives must be one of keep, mask, multi_positive, got 'drop'"):
        ContrastiveObjective(False, "drop")
