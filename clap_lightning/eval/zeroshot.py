"""Zero-shot scoring: class prompt embeddings, targets, metrics, confusion and the per-class report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F

from clap_lightning.errors import DataError
from clap_lightning.eval.metrics import accuracy, f1_at_threshold, mean_average_precision
from clap_lightning.eval.report import plot_confusion, write_table
from clap_lightning.models.clap import CLAP, eval_mode

if TYPE_CHECKING:
    from clap_lightning.eval.suite import TaskResult


def confusion_matrix(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[C, C] counts of single-label predictions (argmax of `logits` [N, C]); rows are the true class."""
    num_classes = logits.shape[1]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((targets, logits.argmax(dim=1)), torch.ones_like(targets), accumulate=True)
    return confusion


def write_zeroshot_report(result: TaskResult, out_dir: str | Path, title: str) -> list[Path]:
    """Per-class accuracy of a scored single-label task: results.md, results.csv and confusion.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion, accuracy_all = result.confusion, result.metrics["acc"]
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    rows = [{"class": c, "clips": int(confusion[i].sum()), "accuracy": round(per_class[i], 4)}
            for i, c in enumerate(result.classes)]
    rows.append({"class": "ALL", "clips": result.num_clips, "accuracy": round(accuracy_all, 4)})
    paths = write_table(rows, out_dir / "results", title)
    paths.append(plot_confusion(confusion, result.classes, out_dir / "confusion.png",
                                f"{title}: accuracy {accuracy_all:.3f}"))
    return paths


# ----------------------------------------------------------------------------- registry tasks
# Multi-label F1 needs yes/no decisions, so it needs scores on which a fixed threshold means
# something. sigmoid(logit_scale * cosine) does not: with a logit scale of 14-100 every class
# with a positive cosine (nearly all of them in a trained CLAP) gets > 0.5, so the threshold
# decides nothing. F1 is therefore computed on each clip's softmax over the task's classes at
# the model's temperature (the probabilities single-label zero-shot uses): a class is predicted
# when it holds at least `threshold` of the clip's probability mass; at 0.5, at most one class
# per clip (most DCASE2017 Task 4 clips carry one label). mAP only needs an order, so it uses
# sigmoid scores as the issue asks (AP is the same for any monotone transform).
DEFAULT_F1_THRESHOLD = 0.5


@torch.no_grad()
def embed_texts(model: CLAP, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Embed texts in batches; returns [N, D], L2-normalised, on the CPU (each submodule's mode is restored)."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            tokens = {k: v.to(device) for k, v in tokenizer(list(texts[start:start + batch_size])).items()}
            out.append(F.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float(), dim=-1))
    return torch.cat(out).cpu()


def embed_class_prompt_sets(model: CLAP, tokenizer, prompts: Sequence[Sequence[str]], ensemble: bool) -> torch.Tensor:
    """Embed `[C][P]` prompt texts into one [C, D] row per class.

    Args:
        prompts: every template filled with every class (`TaskSpec.render_prompts()`), default first.
        ensemble: average the P normalised embeddings of a class and re-normalise (CLIP's prompt
            ensembling); otherwise use the first template only.
    """
    n_templates = len(prompts[0]) if ensemble else 1
    flat = [row[t] for row in prompts for t in range(n_templates)]
    emb = embed_texts(model, tokenizer, flat).view(len(prompts), n_templates, -1)  # [C, P, D]
    return F.normalize(emb.mean(dim=1), dim=-1)


def build_targets(labels: Sequence[Sequence[str]], classes: Sequence[str], multi_label: bool) -> torch.Tensor:
    """Class indices [N] (single-label: exactly one known label per clip) or a multi-hot [N, C] matrix."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for labs in labels for lab in labs if lab not in index})
    if unknown:
        raise DataError(f"{len(unknown)} label(s) outside the task's {len(classes)} classes, e.g. {unknown[:5]}")
    if not multi_label:
        wrong = [i for i, labs in enumerate(labels) if len(labs) != 1]
        if wrong:
            raise DataError(f"single-label task: {len(wrong)} clip(s) without exactly one label (row {wrong[0]})")
        return torch.tensor([index[labs[0]] for labs in labels])
    targets = torch.zeros(len(labels), len(classes), dtype=torch.long)
    for row, labs in enumerate(labels):
        targets[row, [index[lab] for lab in labs]] = 1
    return targets


def model_logit_scale(model: CLAP) -> float:
    """exp(logit_scale), clamped at 100 as in training (CLIP)."""
    return float(model.logit_scale.detach().float().exp().clamp(max=100).reshape(-1)[0])


def score_zero_shot(kind: str, logits: torch.Tensor, targets: torch.Tensor,
                    threshold: Optional[float] = None) -> dict[str, float]:
    """Task metrics from `[N, C]` logits (logit scale x cosine): `acc`, or `mAP` and `F1`.

    Single-label: accuracy of the argmax (softmax does not change it). Multi-label: mAP of
    sigmoid scores, and micro F1 at `threshold` on the per-clip softmax (see the note above).
    """
    if kind == "single_label":
        return {"acc": accuracy(logits, targets)}
    if kind != "multi_label":
        raise ValueError(f"expected a single_label or multi_label task; got '{kind}'")
    threshold = DEFAULT_F1_THRESHOLD if threshold is None else threshold
    return {"mAP": mean_average_precision(torch.sigmoid(logits), targets),
            "F1": f1_at_threshold(logits.softmax(dim=1), targets, threshold)}
