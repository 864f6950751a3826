"""Result tables (Markdown + CSV) and plots (PNG), each written whole or not at all."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def format_markdown(rows: Sequence[dict], title: str) -> str:
    columns = list(rows[0])
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict], stem: Path, title: str) -> list[Path]:
    """Write `<stem>.md` and `<stem>.csv` with one row per dict (keys of the first row are the columns)."""
    if not rows:
        raise ValueError("cannot write an empty table")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    atomic_write_bytes(md, format_markdown(rows, title).encode())
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    return [md, csv_path]


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = (confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = max(5.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if confusion[i, j]:
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
