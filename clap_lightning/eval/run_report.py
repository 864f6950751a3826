"""`clap-lightning report RUN_DIR`: one self-contained HTML page about a run.

The page (`<run_dir>/report.html`) holds the resolved config, the training curves drawn from
the CSV logs (`logs/version_*/metrics.csv`, resumed runs joined by step), the newest evaluation
table against the paper's numbers, the zero-shot results and every confusion plot in the run
folder. Plots are PNGs embedded as base64 `data:` URIs and the style sheet is inline, so the
file can be mailed or opened offline: it loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from clap_lightning.errors import ConfigError
from clap_lightning.eval.report import RESULT_COLUMNS, atomic_write_bytes, comparison_row, png_bytes, pyplot
from clap_lightning.eval.tasks import TASKS

REPORT_NAME = "report.html"
ZEROSHOT_COLUMNS = ("class", "clips", "accuracy")


@dataclass(frozen=True)
class Panel:
    """One training-curve plot: the logged keys (a trailing `*` matches a prefix) drawn against the step."""

    title: str
    keys: tuple[str, ...]
    empty: str  # shown in the panel when none of the keys was logged


PANELS = (
    Panel("Loss", ("train/loss", "val/loss"), "no loss logged"),
    Panel("Accuracy (in-batch retrieval)", ("train/a2t_acc", "train/t2a_acc"), "no accuracy logged"),
    Panel("Logit scale", ("train/logit_scale",), "no logit scale logged"),
    Panel("Learning rate", ("train/lr",), "no learning rate logged"),
    Panel("Throughput (pairs/s, all devices)", ("perf/pairs_per_s",), "no throughput logged"),
    Panel("MFU", ("perf/mfu",), "MFU not reported (no device peak: set trainer.peak_tflops)"),
    Panel("Gradient norm", ("train/grad_norm",), "no gradient norm logged"),
    Panel("Skipped samples (running totals)", ("data/skipped_*",), "no sample was skipped"),
)

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #eee; } td.num { text-align: right; font-family: monospace; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; max-height: 40em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; } figcaption { color: #555; }
"""


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Every logged row of `logs/version_*/metrics.csv`, numbers only, ordered by (step, version)."""
    rows = []
    for order, path in enumerate(sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=_version_number)):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                values = {key: _number(value) for key, value in row.items() if key and value not in ("", None)}
                values = {key: value for key, value in values.items() if value is not None}
                if "step" in values:
                    rows.append((values["step"], order, values))
    return [values for _, _, values in sorted(rows, key=lambda item: item[:2])]


def _version_number(path: Path) -> int:
    suffix = path.parent.name.split("_")[-1]
    return int(suffix) if suffix.isdigit() else -1


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def series(rows: Sequence[dict[str, float]], key: str) -> dict[str, tuple[list[float], list[float]]]:
    """`key` (or every key matching a `prefix*`) -> (steps, values), where logged."""
    names = sorted({name for row in rows for name in row if _matches(name, key)})
    out = {}
    for name in names:
        points = [(row["step"], row[name]) for row in rows if name in row]
        out[name] = ([step for step, _ in points], [value for _, value in points])
    return out


def _matches(name: str, key: str) -> bool:
    return name.startswith(key[:-1]) if key.endswith("*") else name == key


def plot_panel(panel: Panel, rows: Sequence[dict[str, float]]) -> bytes:
    """One panel as PNG bytes; an empty panel says why instead of drawing axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    drawn = {name: points for key in panel.keys for name, points in series(rows, key).items()}
    for name, (steps, values) in drawn.items():
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
    if drawn:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, panel.empty, ha="center", va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title(panel.title, fontsize=10)
    return png_bytes(fig)


def find_tables(run_dir: Path, columns: Sequence[str]) -> list[Path]:
    """CSV tables under `run_dir` whose header is `columns`, newest first (embedding caches skipped)."""
    found = []
    for path in run_dir.rglob("*.csv"):
        if "cache" in path.relative_to(run_dir).parts:
            continue
        with open(path, newline="") as handle:
            if tuple(next(csv.reader(handle), ())) == tuple(columns):
                found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def validation_rows(rows: Sequence[dict[str, float]]) -> list[dict[str, str]]:
    """The newest `val/<task>/<metric>` values logged during fit, beside the paper's numbers."""
    latest: dict[tuple[str, str], float] = {}
    for row in rows:
        for name, value in row.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "val" and parts[1] in TASKS:
                latest[(parts[1], parts[2])] = value
    return [comparison_row(task, metric, ours, TASKS[task].paper.get(metric), "")
            for (task, metric), ours in sorted(latest.items())]


def html_table(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    text = str(value)
    kind = ' class="num"' if _number(text) is not None else ""
    return f"<td{kind}>{html.escape(text)}</td>"


def image(data: bytes, caption: str) -> str:
    """A figure whose PNG is embedded as a data URI."""
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def evaluation_section(run_dir: Path, rows: Sequence[dict[str, float]]) -> str:
    parts = []
    tables = find_tables(run_dir, RESULT_COLUMNS)
    if tables:
        newest = tables[0]
        parts.append(f"<p>From <code>{html.escape(str(newest.relative_to(run_dir)))}</code> "
                     "(<code>clap-lightning eval</code>), newest of the run folder.</p>")
        parts.append(html_table(read_table(newest), RESULT_COLUMNS))
        bars = newest.with_suffix(".png")
        if bars.is_file():
            parts.append(image(bars.read_bytes(), str(bars.relative_to(run_dir))))
    elif validation := validation_rows(rows):
        parts.append("<p>The newest task scores logged during validation (<code>eval.tasks</code>).</p>")
        parts.append(html_table(validation, RESULT_COLUMNS))
    else:
        parts.append("<p>No evaluation in this run folder yet: <code>clap-lightning eval --checkpoint "
                     f"{html.escape(str(run_dir))}/checkpoints/last.ckpt --tasks TASKS --data ROOT</code> "
                     "writes one.</p>")
    for path in find_tables(run_dir, ZEROSHOT_COLUMNS):
        parts.append(f"<h3>Zero-shot: <code>{html.escape(str(path.parent.relative_to(run_dir)))}</code></h3>")
        parts.append(html_table(read_table(path), ZEROSHOT_COLUMNS))
    return "\n".join(parts)


def confusion_section(run_dir: Path) -> str:
    plots = sorted(p for p in run_dir.rglob("*confusion*.png") if "cache" not in p.relative_to(run_dir).parts)
    if not plots:
        return ("<p>No confusion plots yet: <code>clap-lightning zeroshot --checkpoint CKPT --data SHARDS</code> "
                "writes one into the run folder.</p>")
    return '<div class="plots">' + "".join(image(p.read_bytes(), str(p.relative_to(run_dir))) for p in plots) + "</div>"


def summary(run_dir: Path, rows: Sequence[dict[str, float]]) -> str:
    """The run's name, last step and newest throughput, as a short list."""
    last = {key: value for row in rows for key, value in row.items()}  # newest value of every key
    items = [("run folder", str(run_dir.resolve())), ("last logged step", f"{last['step']:.0f}" if rows else "none")]
    for key, label, fmt in (("train/loss", "train loss", "{:.4f}"), ("val/loss", "val loss", "{:.4f}"),
                            ("perf/pairs_per_s", "pairs/s (all devices)", "{:.1f}"),
                            ("perf/data_wait_ms", "loader wait per step (ms)", "{:.1f}"),
                            ("perf/tflops_per_device", "TFLOP/s per device", "{:.3g}"), ("perf/mfu", "MFU", "{:.2%}")):
        if key in last:
            items.append((label, fmt.format(last[key])))
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    items.append(("checkpoints", ", ".join(checkpoints) or "none"))
    return "<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in items) + "</ul>"


def write_run_report(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """Write the report page of `run_dir` (default `<run_dir>/report.html`) and return its path.

    Raises:
        ConfigError: `run_dir` holds no resolved `config.yaml` (not a run folder).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml, so not a clap-lightning run folder")
    config_text = config_path.read_text()
    rows = read_metrics(run_dir)
    name = next((line.split(":", 1)[1].strip() for line in config_text.splitlines() if line.startswith("name:")),
                run_dir.name)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    curves = '<div class="plots">' + "".join(image(plot_panel(p, rows), p.title) for p in PANELS) + "</div>"
    body = "\n".join([
        f"<h1>CLAP run {html.escape(name)}</h1><p>Report written {stamp}.</p>",
        section("summary", "Summary", summary(run_dir, rows)),
        section("curves", "Training curves", curves),
        section("evaluation", "Evaluation against the paper", evaluation_section(run_dir, rows)),
        section("confusion", "Confusion plots", confusion_section(run_dir)),
        section("config", "Resolved config", f"<pre>{html.escape(config_text)}</pre>"),
    ])
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>CLAP run {html.escape(name)}'
            f"</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
    path = Path(out) if out else run_dir / REPORT_NAME
    atomic_write_bytes(path, page.encode())
    return path
