"""`clap-lightning zeroshot` is a front of the evaluation suite: its numbers are the suite's and
those of the inference API (`embed_audio` / `embed_text`), which all embed through `embed_clips`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clap_lightning.cli import main
from clap_lightning.config import ExperimentConfig, config_from, to_container
from clap_lightning.eval.suite import TaskEvaluator
from clap_lightning.models.clap import CLAP
from tests.shard_factory import encode, write_tar
from tests.unit.test_embed_index import TINY

RATE = 16000  # the tiny model's rate: no resampling
SECONDS = 2.5  # longer than the tiny model's 2.04-s clip: no padding either way


def clip(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * RATE)) / RATE
    if kind == "noise":
        return (0.3 * rng.standard_normal(t.size)).astype(np.float32)
    freq = {"low tone": 220.0, "high tone": 3000.0}[kind] * (1 + 0.05 * rng.random())
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A random-weight tiny checkpoint and 2 shards of 12 labelled clips (3 classes)."""
    root = tmp_path_factory.mktemp("zeroshot")
    torch.manual_seed(0)
    config = config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(TINY))})
    model = CLAP(config.model).eval()
    checkpoint = root / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_container(config)}}, checkpoint)
    kinds = ["low tone", "high tone", "noise"] * 4
    clips, shards = [], root / "shards"
    shards.mkdir()
    for shard in range(2):
        members = []
        for i in range(6 * shard, 6 * shard + 6):
            clips.append(clip(kinds[i], i))
            meta = {"text": [f"a {kinds[i]}"], "source": "zs", "id": str(i), "split": "test",
                    "duration": SECONDS, "sample_rate": RATE, "labels": [kinds[i]]}
            members += [(f"zs-{i}.flac", encode(clips[-1], RATE)), (f"zs-{i}.json", json.dumps(meta).encode())]
        write_tar(shards / f"zs-test-{shard:06d}.tar", members)
    return {"checkpoint": checkpoint, "shards": shards, "model": model, "clips": clips, "labels": kinds,
            "prompt": config.zeroshot.prompt}


def test_zeroshot_scores_through_the_suite_with_the_inference_apis_numbers(labelled, tmp_path, monkeypatch, capsys):
    calls = []
    evaluate = TaskEvaluator.evaluate
    monkeypatch.setattr(
        TaskEvaluator, "evaluate", lambda self, *a, **k: calls.append(a[0].name) or evaluate(self, *a, **k)
    )
    out = tmp_path / "report"
    assert main(["zeroshot", "--checkpoint", str(labelled["checkpoint"]), "--data", str(labelled["shards"]),
                 "--out", str(out), "--num-workers", "0", "--batch-size", "5"]) == 0
    assert calls == ["zeroshot"]  # one task of the suite
    assert "12 held-out clips, 3 classes" in capsys.readouterr().out

    # The same numbers from the inference API: embed_audio / embed_text, cosine argmax.
    model, classes = labelled["model"], ["high tone", "low tone", "noise"]  # found in the shards, sorted
    audio_emb = model.embed_audio(labelled["clips"], sample_rate=RATE)
    text_emb = model.embed_text([labelled["prompt"].format(c) for c in classes])
    predicted = (audio_emb @ text_emb.T).argmax(dim=1)
    truth = torch.tensor([classes.index(label) for label in labelled["labels"]])
    confusion = torch.zeros(3, 3, dtype=torch.long).index_put_((truth, predicted), torch.ones(12, dtype=torch.long),
                                                               accumulate=True)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == classes + ["ALL"]
    assert [int(row["clips"]) for row in rows] == [4, 4, 4, 12]
    assert float(rows[-1]["accuracy"]) == pytest.approx(float((predicted == truth).float().mean()), abs=1e-4)
    for i, row in enumerate(rows[:-1]):
        assert float(row["accuracy"]) == pytest.approx(float(confusion[i, i]) / 4, abs=1e-4)
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
