"""Shards -> fit -> checkpoint -> resume -> zero-shot report, through the real CLI."""

import csv

import torch
from omegaconf import OmegaConf

from clap_lightning.cli import main
from tests.e2e.conftest import DEMO_EXPERIMENT, demo_overrides


def test_fit_resume_and_zeroshot(demo_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", "--config", str(DEMO_EXPERIMENT), *demo_overrides(demo_shards, run_dir, steps=3)]) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.trainer.max_steps == 3 and saved.data.train == str(demo_shards / "train")
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["config"]["run_dir"] == str(run_dir)
    assert not list(run_dir.rglob("*.tmp*"))  # nothing half-written

    # Resume from the newest checkpoint and continue to step 5.
    assert main(["fit", "--config", str(DEMO_EXPERIMENT), "--ckpt_path", "last",
                 *demo_overrides(demo_shards, run_dir, steps=5)]) == 0
    assert torch.load(last, weights_only=False)["global_step"] == 5
    metrics = [row for path in sorted((run_dir / "logs").glob("version_*/metrics.csv"))
               for row in csv.DictReader(open(path))]
    assert len(list((run_dir / "logs").glob("version_*"))) == 2  # the resumed run kept the first run's log
    assert any(row.get("train/loss") for row in metrics) and any(row.get("val/loss") for row in metrics)

    out = tmp_path / "zs"
    assert main(["zeroshot", "--checkpoint", str(last), "--data", str(demo_shards / "test"),
                 "--out", str(out), "--num-workers", "0"]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("zero-shot accuracy: ") and "42 held-out clips, 14 classes" in last_line
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 15 and rows[-1]["class"] == "ALL"
    assert abs(float(rows[-1]["accuracy"]) - float(last_line.split()[2])) < 1e-3  # printed with 3 decimals
    assert (out / "results.md").read_text().startswith("# Zero-shot")
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_and_test_stages_run_from_a_checkpoint(demo_shards, tmp_path):
    run_dir = tmp_path / "run"
    overrides = demo_overrides(demo_shards, run_dir, steps=1)
    assert main(["fit", "--config", str(DEMO_EXPERIMENT), *overrides]) == 0
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert main(["validate", "--config", str(DEMO_EXPERIMENT), "--ckpt_path", ckpt, *overrides]) == 0
    assert main(["test", "--config", str(DEMO_EXPERIMENT), "--ckpt_path", ckpt, *overrides]) == 0
