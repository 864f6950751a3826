"""`clap-lightning eval` on a 2-task fixture (demo zero-shot + demo shards as a Clotho-style retrieval set),
the validation-time task callback, and fine-tuning on the demo corpus."""

from __future__ import annotations

import csv
import json
import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from clap_lightning.cli import main
from tests.e2e.conftest import DEMO_EXPERIMENT, REPO, demo_overrides

RETRIEVAL_METRICS = ["R@1", "R@5", "R@10", "mAP@10"]


@pytest.fixture(scope="module")
def eval_run(demo_shards, tmp_path_factory) -> dict:
    """A 2-step fit that validates once with `eval.tasks=demo`; its checkpoint and an eval data root."""
    run_dir = tmp_path_factory.mktemp("eval_run")
    overrides = demo_overrides(demo_shards, run_dir, steps=2) + ["eval.tasks=demo", f"eval.data={demo_shards.parent}"]
    assert main(["fit", "--config", str(DEMO_EXPERIMENT), *overrides]) == 0
    root = tmp_path_factory.mktemp("eval_data")
    for split in ("train", "test"):
        (root / "demo").mkdir(exist_ok=True)
        (root / "demo" / split).symlink_to(demo_shards / split)
    # The demo test split, captions and all, as a retrieval corpus (2-3 captions per clip).
    shutil.copytree(demo_shards / "test", root / "clotho" / "test")
    return {"run_dir": run_dir, "checkpoint": run_dir / "checkpoints" / "last.ckpt", "data": root}


def _eval(eval_run, out: Path, tasks: str, *extra: str) -> int:
    return main(["eval", "--checkpoint", str(eval_run["checkpoint"]), "--tasks", tasks, "--data",
                 str(eval_run["data"]), "--out", str(out), "--num-workers", "0", "--batch-size", "16", *extra])


def test_eval_writes_table_and_plot_skips_missing_tasks_and_reuses_the_cache(eval_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert _eval(eval_run, out, "demo,clotho,esc50") == 0
    printed = capsys.readouterr().out
    assert "audio embeddings: 2 split(s) computed, 0 from cache" in printed

    rows = list(csv.DictReader(open(out / "results.csv")))
    expected = [("demo", "acc")] + [(f"clotho_{d}", m) for d in ("a2t", "t2a") for m in RETRIEVAL_METRICS]
    assert [(row["task"], row["metric"]) for row in rows] == expected + [("esc50", "acc")]
    for row in rows[:-1]:
        assert 0.0 <= float(row["ours"]) <= 1.0 and int(row["clips"]) == 42
    clotho_r1 = rows[1]
    assert clotho_r1["paper"] == "0.2290"
    assert float(clotho_r1["delta"]) == pytest.approx(float(clotho_r1["ours"]) - 0.229, abs=1e-4)
    assert rows[0]["paper"] == "" and rows[2]["paper"] == ""  # no paper number: demo, and R@5
    assert rows[-1]["ours"] == f"skipped: no shards at {eval_run['data'] / 'esc50' / 'test'}"
    assert rows[-1]["paper"] == "0.9390"
    markdown = (out / "results.md").read_text().splitlines()
    assert markdown[2] == "| task | metric | ours | paper | delta | clips |" and len(markdown) == 4 + len(rows)
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    # A second run reads both splits from the cache: same numbers, cache files untouched.
    cache_files = sorted((out / "cache").glob("*.pt"))
    assert [p.name.split("-")[:2] for p in cache_files] == [["clotho", "test"], ["demo", "test"]]
    mtimes = [p.stat().st_mtime_ns for p in cache_files]
    assert _eval(eval_run, out, "demo,clotho,esc50") == 0
    assert "audio embeddings: 0 split(s) computed, 2 from cache" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in cache_files] == mtimes
    assert list(csv.DictReader(open(out / "results.csv"))) == rows
    assert not list(out.rglob("*.tmp*"))


def test_eval_agrees_with_the_zeroshot_command(eval_run, tmp_path, capsys):
    # Same prompt ("this is a sound of {}"), same clips: the same accuracy either way.
    assert _eval(eval_run, tmp_path / "eval", "demo", "--cache", "none", "--linear-probe") == 0
    rows = list(csv.DictReader(open(tmp_path / "eval" / "results.csv")))
    assert [row["metric"] for row in rows] == ["acc", "probe_acc"]
    assert 0.0 <= float(rows[1]["ours"]) <= 1.0
    assert not (tmp_path / "eval" / "cache").exists()
    assert main(["zeroshot", "--checkpoint", str(eval_run["checkpoint"]), "--data", str(eval_run["data"] / "demo/test"),
                 "--out", str(tmp_path / "zs"), "--num-workers", "0"]) == 0
    zs_accuracy = float(capsys.readouterr().out.strip().splitlines()[-1].split()[2])
    assert float(rows[0]["ours"]) == pytest.approx(zs_accuracy, abs=1e-3)
    # The README's wording of the same prompt: `{class}` is the same placeholder as `{}`.
    assert (
        main(
            [
                "zeroshot",
                "--checkpoint",
                str(eval_run["checkpoint"]),
                "--data",
                str(eval_run["data"] / "demo/test"),
                "--out",
                str(tmp_path / "zs_named"),
                "--num-workers",
                "0",
                "--prompt",
                "this is a sound of {class}",
            ]
        )
        == 0
    )
    assert float(capsys.readouterr().out.strip().splitlines()[-1].split()[2]) == zs_accuracy


def test_unknown_task_is_one_line_listing_the_known_tasks(eval_run, tmp_path, capsys):
    assert _eval(eval_run, tmp_path / "bad", "esc50,esc5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: unknown task 'esc5'; known: ")
    assert all(name in err for name in ("demo", "esc50", "clotho_a2t", "libricount10"))
    assert not (tmp_path / "bad").exists()  # nothing written


def _rows(out: Path, task: str) -> list[dict]:
    return [row for row in csv.DictReader(open(out / "results.csv")) if row["task"] == task]


def test_eval_with_a_captioner_scores_captioning_and_without_one_names_the_option(eval_run, tmp_path, capsys):
    import torch

    from clap_lightning.config import load_config, to_container
    from clap_lightning.eval.embed import split_urls
    from clap_lightning.lit.caption_data import cache_from_shards, read_embedding_cache
    from clap_lightning.lit.captioning import CaptioningModule, evaluate_captioning, fit_captioning, load_captioner
    from clap_lightning.lit.captioning_config import CaptioningConfig
    from clap_lightning.lit.run import load_pretraining

    assert _eval(eval_run, tmp_path / "plain", "clotho_captioning") == 0
    assert [(r["metric"], r["ours"], r["paper"]) for r in _rows(tmp_path / "plain", "clotho_captioning")] == [
        ("SPIDEr", "skipped: captioning needs a captioner (eval --captioner CKPT)", "0.2710")]

    # A captioner trained a few steps, as the rehearsal trains one: the CLAP's embeddings of captioned shards.
    checkpoint, cache = eval_run["checkpoint"], tmp_path / "train.pt"
    assert cache_from_shards(checkpoint, split_urls(eval_run["data"] / "demo" / "train"), cache, batch_size=16) == 112
    stored = read_embedding_cache(cache)
    assert torch.allclose(stored["audio_emb"].norm(dim=1), torch.ones(112), atol=1e-5)  # what eval captions from
    assert all(stored["captions"]) and stored["clap_checkpoint"] == str(checkpoint)
    d_proj = load_pretraining(str(checkpoint)).config.model.d_proj
    config = load_config(CaptioningConfig, REPO / "configs" / "rehearsal" / "captioning.yaml", [
        f"run_dir={tmp_path / 'cap'}", f"data.train={cache}", f"clap_checkpoint={checkpoint}",
        f"captioner.mapper.d_audio={d_proj}", "trainer.max_steps=3"])
    fit_captioning(config)
    captioner = tmp_path / "cap" / "checkpoints" / "last.ckpt"

    out = tmp_path / "captioned"
    assert _eval(eval_run, out, "clotho_captioning,clotho_a2t", "--captioner", str(captioner)) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^clotho_captioning: CIDEr-D \(paper: SPIDEr\) \d+\.\d{4}$", printed, re.M)
    rows = _rows(out, "clotho_captioning")
    assert [r["metric"] for r in rows] == ["CIDEr-D (paper: SPIDEr)", "BLEU_4", "ROUGE_L"]
    assert rows[0]["paper"] == "0.2710" and rows[0]["delta"] == ""  # never a CIDEr-D minus SPIDEr difference
    assert all(r["paper"] == "" and r["clips"] == "42" for r in rows[1:])
    # The same numbers as captioning those clips' embeddings outside the suite (lit/captioning.py).
    test_cache = tmp_path / "test.pt"
    cache_from_shards(checkpoint, split_urls(eval_run["data"] / "clotho" / "test"), test_cache)
    model, stored_config = load_captioner(captioner)
    expected, captions = evaluate_captioning(model, test_cache, stored_config.decoding)
    assert len(captions) == 42
    for row, metric in zip(rows, ("CIDEr-D", "BLEU_4", "ROUGE_L")):
        assert float(row["ours"]) == pytest.approx(expected[metric], abs=1e-4)
    assert [r["metric"] for r in _rows(out, "clotho_a2t")] == RETRIEVAL_METRICS  # the other rows as before

    # A captioner sized for another CLAP: one error line, exit 2.
    wrong = CaptioningModule(load_config(CaptioningConfig, REPO / "configs" / "rehearsal" / "captioning.yaml",
                                         [f"captioner.mapper.d_audio={d_proj + 1}"]))
    torch.save({"hyper_parameters": {"config": to_container(wrong.config)}, "state_dict": wrong.state_dict()},
               tmp_path / "wrong.ckpt")
    assert _eval(eval_run, tmp_path / "wrong", "clotho_captioning", "--captioner", str(tmp_path / "wrong.ckpt")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: captioner {tmp_path / 'wrong.ckpt'} reads {d_proj + 1}-d audio embeddings; "
                   f"{checkpoint} makes {d_proj}-d ones")


def test_callback_logs_demo_accuracy_during_validation(eval_run):
    logged = [row for path in (eval_run["run_dir"] / "logs").glob("version_*/metrics.csv")
              for row in csv.DictReader(open(path)) if row.get("val/demo/acc")]
    assert len(logged) == 1 and 0.0 <= float(logged[0]["val/demo/acc"]) <= 1.0
    assert logged[0]["step"] == "1"  # the one validation, after step 2 (0-based step index 1)


def test_finetune_trains_a_copy_of_the_encoder(eval_run):
    import torch

    from clap_lightning.eval.embed import ClipSettings
    from clap_lightning.eval.tasks import get_task
    from clap_lightning.lit.finetune import FineTuneConfig, finetune_task
    from clap_lightning.lit.run import load_pretraining

    module = load_pretraining(eval_run["checkpoint"])
    encoder = module.model.audio_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    config = FineTuneConfig(max_epochs=1, batch_size=16, num_workers=0, accelerator="cpu")
    clip = ClipSettings(module.config.model.sample_rate, module.config.model.clip_samples)
    result = finetune_task(encoder, get_task("demo"), clip, eval_run["data"], config)
    assert list(result) == ["test"] and 0.0 <= result["test"] <= 1.0
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # the original is untouched

    # The fold protocol, with the demo's `loudness` attribute standing in for ESC-50's `fold`: each value is
    # held out once; a fold that did not exist would have no test clips and fail.
    spec = dataclasses.replace(get_task("demo"), fold_field="loudness")
    per_fold = finetune_task(encoder, spec, clip, eval_run["data"], config)
    assert sorted(per_fold) == ["loud", "quiet"] and all(0.0 <= acc <= 1.0 for acc in per_fold.values())


def test_finetune_command_reports_folds_and_probe(eval_run, tmp_path, capsys):
    common = ["--checkpoint", str(eval_run["checkpoint"]), "--data", str(eval_run["data"]), "--task", "demo",
              "--batch-size", "16", "--num-workers", "0"]
    assert main(["finetune", *common, "--epochs", "1", "--out", str(tmp_path / "ft")]) == 0
    result = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert result["mode"] == "finetune" and list(result["folds"]) == ["test"] and 0 <= result["mean"] <= 1
    assert main(["finetune", *common, "--probe"]) == 0
    assert "mean accuracy" in capsys.readouterr().out
    assert main(["finetune", *common[:4], "--task", "clotho_t2a", "--num-workers", "0"]) == 2
    assert main(["finetune", *common[:4], "--task", "nosuchtask"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "single-label" in errors[0] and "unknown task" in errors[1]
