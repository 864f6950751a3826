"""Result tables (Markdown + CSV) and plots (PNG), each written whole or not at all."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import torch

from clap_lightning.eval.tasks import KIND_METRICS


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


def pyplot():
    """Import pyplot on the file-only Agg backend (no display on cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """Lay out `fig`, render it as a 100-dpi PNG, close it and return the bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return buffer.getvalue()


def _save_png(fig, path: Path) -> Path:
    """Write `fig` to `path` as a 100-dpi PNG atomically, close it and return `path`."""
    atomic_write_bytes(path, png_bytes(fig))
    return path


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix as a PNG."""
    plt = pyplot()
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
    return _save_png(fig, path)


# ----------------------------------------------------------------------------- multi-task results
PROBE_METRIC = "probe_acc"  # linear-probe accuracy (eval/linear_probe.py); the paper reports none


RESULT_COLUMNS = ("task", "metric", "ours", "paper", "delta", "clips")  # of results.csv, as `comparison_row` fills


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def comparison_row(task: str, metric: str, ours: float, paper: float | None, clips: int | str) -> dict:
    """One results-table row: our value beside the paper's and the difference, to 4 decimals."""
    return {"task": task, "metric": metric, "ours": _fmt(ours), "paper": _fmt(paper),
            "delta": "" if paper is None else f"{ours - paper:+.4f}", "clips": clips}


def result_rows(results: Sequence) -> list[dict]:
    """One row per (task, metric) with the paper's number and our delta; a skipped task is one row.

    Args:
        results: `suite.TaskResult`s. Metrics shown: the paper's (headline first), the other
            metrics of the task's kind that were computed, then the linear probe if run.
    """
    rows = []
    for result in results:
        spec = result.spec
        if result.status:
            rows.append({"task": spec.name, "metric": spec.metric, "ours": result.status,
                         "paper": _fmt(spec.paper.get(spec.metric)), "delta": "", "clips": 0})
            continue
        names = [spec.metric] + [m for m in (*spec.paper, *KIND_METRICS[spec.kind]) if m != spec.metric]
        for paper_metric, ours_metric in spec.stand_in.items():  # ours beside the paper's, labelled, no delta
            if spec.result_key(ours_metric) in result.metrics:
                row = comparison_row(spec.name, f"{ours_metric} (paper: {paper_metric})",
                                     result.metrics[spec.result_key(ours_metric)], spec.paper.get(paper_metric),
                                     result.num_clips)
                rows.append({**row, "delta": ""})  # different metrics: no difference is meaningful
                names = [m for m in names if m != ours_metric]
        shown = [m for m in dict.fromkeys(names) if spec.result_key(m) in result.metrics]
        if PROBE_METRIC in result.metrics:
            shown.append(PROBE_METRIC)
        for metric in shown:
            ours = result.metrics[spec.result_key(metric) if metric != PROBE_METRIC else metric]
            rows.append(comparison_row(spec.name, metric, ours, spec.paper.get(metric), result.num_clips))
    return rows


def plot_comparison(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Horizontal bars, ours vs the paper, for every scored row (a row without a comparable paper number has one)."""
    plt = pyplot()
    scored = [row for row in rows if row["ours"] and not row["ours"].startswith("skipped")]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(scored) + 1.5)))
    if scored:
        y = torch.arange(len(scored), dtype=torch.float64).numpy()
        ours = [float(row["ours"]) for row in scored]
        # A paper bar only where the metrics are the same (a delta is shown): none beside a stand-in.
        paper = [float(row["paper"]) if row["paper"] and row["delta"] else float("nan") for row in scored]
        ax.barh(y - 0.2, ours, height=0.4, label="ours", color="tab:blue")
        ax.barh(y + 0.2, paper, height=0.4, label="paper", color="tab:gray")
        ax.set_yticks(y, [f"{row['task']} {row['metric']}" for row in scored], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1.0, *ours))  # CIDEr-D may exceed 1
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no task was scored", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(title)
    return _save_png(fig, path)


def write_eval_report(results: Sequence, out_dir: str | Path, title: str) -> list[Path]:
    """Write `results.md`, `results.csv` (the same rows) and `results.png` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result_rows(results)
    paths = write_table(rows, out_dir / "results", title)
    paths.append(plot_comparison(rows, out_dir / "results.png", title))
    return paths
