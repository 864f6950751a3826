"""A 20-step demo fit with every logger on: where each writes, the live throughput metrics, the report page."""

from __future__ import annotations

import base64
import csv
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from clap_lightning.cli import main
from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.eval.run_report import PANELS
from clap_lightning.flops import count_flops
from clap_lightning.lit.loggers import TRACKING_EXTRA
from clap_lightning.models.clap import CLAP
from tests.e2e.conftest import DEMO_EXPERIMENT, demo_overrides

STEPS, LOG_EVERY, BATCH, PEAK_TFLOPS = 20, 5, 8, 1.0


def tracked_overrides(shards: Path, run_dir: Path) -> list[str]:
    return demo_overrides(shards, run_dir, steps=STEPS) + [
        f"data.global_batch_size={BATCH}", "data.epoch_samples=160", f"trainer.log_every_n_steps={LOG_EVERY}",
        "trainer.val_check_interval=10", "trainer.loggers=[csv,tensorboard,wandb,mlflow]",
        f"trainer.peak_tflops={PEAK_TFLOPS}", "report=true", "eval.tasks=demo", f"eval.data={shards.parent}"]


@pytest.fixture(scope="module")
def tracked_run(demo_shards, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    overrides = tracked_overrides(demo_shards, run_dir)
    started = time.perf_counter()
    assert main(["fit", "--config", str(DEMO_EXPERIMENT), *overrides]) == 0
    seconds = time.perf_counter() - started
    rows = list(csv.DictReader(open(run_dir / "logs" / "version_0" / "metrics.csv")))
    return {"run_dir": run_dir, "seconds": seconds, "rows": rows, "overrides": overrides, "shards": demo_shards}


def test_each_logger_writes_where_it_should(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tracked_run["run_dir"]
    events = list((run_dir / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert {"train/loss", "perf/pairs_per_s", "perf/mfu", "train/grad_norm"} <= set(scalars)

    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    records = next(wandb_runs[0].glob("run-*.wandb")).read_bytes()  # W&B's offline record file, synced later
    assert b"perf/pairs_per_s" in records and b"max_steps" in records  # metrics and the logged config

    mlflow_runs = [p.parent for p in (run_dir / "mlruns").glob("*/*/meta.yaml")]
    assert len(mlflow_runs) == 1
    mlflow_run = mlflow_runs[0]
    assert "run_name: demo" in (mlflow_run / "meta.yaml").read_text()
    assert (mlflow_run / "params" / "config" / "trainer" / "max_steps").read_text() == str(STEPS)
    pairs = (mlflow_run / "metrics" / "perf" / "pairs_per_s").read_text().split("\n")
    assert [int(line.split()[2]) for line in pairs if line] == list(range(LOG_EVERY - 1, STEPS, LOG_EVERY))

    assert (run_dir / "logs" / "version_0" / "hparams.yaml").read_text().count("max_steps: 20") == 1


def test_throughput_and_health_are_logged_every_interval_with_plausible_values(tracked_run):
    logged = [row for row in tracked_run["rows"] if row.get("perf/pairs_per_s")]
    assert [int(row["step"]) for row in logged] == list(range(LOG_EVERY - 1, STEPS, LOG_EVERY))
    config = load_config(ExperimentConfig, DEMO_EXPERIMENT, tracked_run["overrides"])
    torch.manual_seed(0)
    model = CLAP(config.model)
    length = config.model.text_encoder["max_length"]
    with count_flops() as reference:  # one batch's forward and backward at the longest caption length
        audio, text, scale = model(0.1 * torch.randn(BATCH, config.model.clip_samples),
                                   torch.randint(0, 300, (BATCH, length)), torch.ones(BATCH, length, dtype=torch.long))
        (audio @ text.T * scale.exp()).sum().backward()
    wall = 0.0
    for row in logged:
        pairs, step_ms = float(row["perf/pairs_per_s"]), float(row["perf/step_ms"])
        assert pairs > 0 and pairs == float(row["perf/pairs_per_s_per_device"])
        assert pairs * step_ms / 1000 == pytest.approx(BATCH, rel=1e-4)
        assert 0 < float(row["perf/data_wait_ms"]) < step_ms  # the loader decodes in this process (0 workers)
        tflops, mfu = float(row["perf/tflops_per_device"]), float(row["perf/mfu"])
        assert 0 < mfu < 1 and mfu == pytest.approx(tflops / PEAK_TFLOPS)
        flops_per_step = tflops * 1e12 * step_ms / 1000
        # Captions are padded per batch, so the counted step has at most the reference's text FLOPs.
        assert 0.5 * reference.total < flops_per_step <= 1.0001 * reference.total
        assert float(row["train/grad_norm"]) > 0 and float(row["train/lr"]) >= 0
        wall += LOG_EVERY * step_ms / 1000
    assert wall < tracked_run["seconds"]  # the intervals fit inside the fit's own wall time


class PageParser(HTMLParser):
    """Sections by id, the images in each, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.current = None
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs["id"]
            self.sections[self.current] = []
        if tag == "img":
            self.sections[self.current].append(attrs["src"])
        for name in ("src", "href"):
            if name in attrs and not attrs[name].startswith("data:"):
                self.external.append(attrs[name])
        if tag in ("link", "script", "iframe"):
            self.external.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text())
    return parser


def decoded_pngs(sources: list[str]) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in sources)
    return [base64.b64decode(src[len(prefix):]) for src in sources]


def test_fit_writes_the_report_and_the_report_command_adds_later_evaluations(tracked_run, capsys):
    run_dir, shards = tracked_run["run_dir"], tracked_run["shards"]
    page = parse_page(run_dir / "report.html")  # written by fit (report: true)
    assert list(page.sections) == ["summary", "curves", "evaluation", "confusion", "config"]
    assert page.external == []
    curves = decoded_pngs(page.sections["curves"])
    assert len(curves) == len(PANELS) and all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in curves)
    text = "".join(page.text)
    assert "max_steps: 20" in text and "pairs/s (all devices)" in text
    assert "demo" in text and "acc" in text  # the validation-time task score (eval.tasks=demo)
    assert page.sections["confusion"] == [] and "No confusion plots yet" in text

    assert main(["zeroshot", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--data",
                 str(shards / "test"), "--num-workers", "0"]) == 0
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--tasks", "demo,esc50",
                 "--data", str(shards.parent), "--num-workers", "0", "--batch-size", "16"]) == 0
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.html'}"
    page = parse_page(run_dir / "report.html")
    assert page.external == []
    confusion = decoded_pngs(page.sections["confusion"])
    assert len(confusion) == 1 and confusion[0] == (run_dir / "zeroshot" / "confusion.png").read_bytes()
    evaluation = decoded_pngs(page.sections["evaluation"])
    assert evaluation == [(run_dir / "eval" / "results.png").read_bytes()]  # ours vs the paper, as bars
    text = "".join(page.text)
    assert "eval/results.csv" in text and "0.9390" in text  # the paper's ESC-50 accuracy beside ours
    assert "Zero-shot" in text and "white noise" in text


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_chromium_renders_the_report_page(tracked_run, tmp_path):
    import matplotlib.image

    shot = tmp_path / "report.png"
    page = (tracked_run["run_dir"] / "report.html").as_uri()
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", page],
                   check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]  # [H, W, 3] in [0, 1]
    assert pixels.shape[:2] == (1600, 1200)
    ink = (pixels.min(axis=2) < 0.8).mean()  # share of pixels that are not (near) white
    assert ink > 0.02 and pixels.std() > 0.05


def test_a_logger_without_its_package_is_one_error_line(demo_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    overrides = demo_overrides(demo_shards, tmp_path / "run") + ["trainer.loggers=[csv,wandb]"]
    assert main(["fit", "--config", str(DEMO_EXPERIMENT), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: trainer.loggers has wandb, but the wandb package is not installed: {TRACKING_EXTRA}"
    assert not (tmp_path / "run" / "checkpoints").exists()
