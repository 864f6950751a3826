"""Zero-shot classification: embed labelled clips once, score them against class prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from clap_lightning.errors import DataError
from clap_lightning.eval.metrics import accuracy
from clap_lightning.models.clap import CLAP


@dataclass
class EmbeddedSet:
    """Audio embeddings of an evaluation set with their keys and labels."""

    audio_emb: torch.Tensor  # [N, D], L2-normalised
    labels: list[list[str]]
    keys: list[str] = field(default_factory=list)


@dataclass
class ZeroShotResult:
    classes: list[str]
    accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: torch.Tensor  # [C, C] counts, rows = true class
    num_clips: int


@torch.no_grad()
def embed_audio_batches(model: CLAP, batches: Iterable[dict]) -> EmbeddedSet:
    """Embed every batch of a (non-shuffled) evaluation loader."""
    model.eval()
    device = next(model.parameters()).device
    embs, labels, keys = [], [], []
    for batch in batches:
        embs.append(F.normalize(model.encode_audio(batch["audio"].to(device)).float(), dim=-1).cpu())
        labels += batch["labels"]
        keys += batch["key"]
    if not embs:
        raise DataError("the evaluation shards yielded no clips")
    return EmbeddedSet(torch.cat(embs), labels, keys)


@torch.no_grad()
def embed_class_prompts(model: CLAP, tokenizer, classes: Sequence[str], prompt: str) -> torch.Tensor:
    """Embed one prompt per class, `prompt.format(class)`; returns [C, D], L2-normalised."""
    model.eval()
    device = next(model.parameters()).device
    tokens = {k: v.to(device) for k, v in tokenizer([prompt.format(c) for c in classes]).items()}
    return F.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float(), dim=-1).cpu()


def classify(embedded: EmbeddedSet, class_emb: torch.Tensor, classes: Sequence[str]) -> ZeroShotResult:
    """Single-label zero-shot classification by cosine similarity; clips without a known label fail."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab[0] for lab in embedded.labels if lab and lab[0] not in index})
    if unknown or any(not lab for lab in embedded.labels):
        raise DataError(f"clips with labels outside the class list (or none): {unknown[:5]}")
    targets = torch.tensor([index[lab[0]] for lab in embedded.labels])
    logits = embedded.audio_emb @ class_emb.T  # [N, C]
    preds = logits.argmax(dim=1)
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((targets, preds), torch.ones_like(targets), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    return ZeroShotResult(list(classes), accuracy(logits, targets), dict(zip(classes, per_class)),
                          confusion, len(targets))


def collect_classes(embedded: EmbeddedSet, classes: Optional[Sequence[str]]) -> list[str]:
    """The given class list, or the sorted set of labels found in the shards."""
    if classes:
        return list(classes)
    found = sorted({label for labels in embedded.labels for label in labels})
    if not found:
        raise DataError("no class names given and the shards carry no labels")
    return found


def write_zeroshot_report(result: ZeroShotResult, out_dir: str | Path, title: str) -> list[Path]:
    """Write results.md, results.csv and confusion.png into `out_dir`; return their paths."""
    from clap_lightning.eval.report import plot_confusion, write_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"class": c, "clips": int(result.confusion[i].sum()), "accuracy": round(result.per_class_accuracy[c], 4)}
            for i, c in enumerate(result.classes)]
    rows.append({"class": "ALL", "clips": result.num_clips, "accuracy": round(result.accuracy, 4)})
    paths = write_table(rows, out_dir / "results", title)
    paths.append(plot_confusion(result.confusion, result.classes, out_dir / "confusion.png",
                                f"{title}: accuracy {result.accuracy:.3f}"))
    return paths
