"""Zero-shot scoring rules, prompt ensembling, linear probe and folds, embedding cache, result rows, callback keys."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.config import EvalConfig, ExperimentConfig, load_config
from clap_lightning.errors import ConfigError, DataError
from clap_lightning.lit.eval_callback import TaskEvalCallback
from clap_lightning.eval.embed import EmbeddedSplit, EmbeddingCache
from clap_lightning.eval.linear_probe import cross_validate_probe, fold_splits, train_test_probe
from clap_lightning.eval.metrics import f1_at_threshold, retrieval_metrics
from clap_lightning.eval.report import result_rows
from clap_lightning.eval.retrieval import caption_table
from clap_lightning.eval.suite import TaskResult
from clap_lightning.eval.tasks import get_task
from clap_lightning.data.schema import read_labels
from clap_lightning.eval.zeroshot import build_targets, embed_class_prompt_sets, score_zero_shot
from clap_lightning.lit.finetune import FoldFilter


def test_multi_label_f1_uses_the_per_clip_softmax_and_map_the_sigmoid_order():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
    metrics = score_zero_shot("multi_label", logits, targets, threshold=0.5)
    # softmax rows: [0.84, 0.11, 0.04] -> {0}; [0.045, 0.91, 0.045] -> {1}. TP 2, FP 0, FN 1: F1 = 4 / 5.
    assert metrics["F1"] == pytest.approx(0.8)
    # Each class' positives outrank its negatives (class 2: 0 > -1), so every AP is 1.
    assert metrics["mAP"] == pytest.approx(1.0)
    # sigmoid >= 0.5 would also predict every logit-0 class: TP 3, FP 2, FN 0, F1 = 6 / 8 (not what we report).
    assert f1_at_threshold(torch.sigmoid(logits), targets, 0.5) == pytest.approx(0.75)
    assert score_zero_shot("single_label", logits, torch.tensor([0, 2])) == {"acc": 0.5}
    with pytest.raises(ValueError, match="single_label or multi_label"):
        score_zero_shot("retrieval", logits, targets)


def test_labels_and_targets():
    assert read_labels({"pitch": 60}, "pitch") == ["60"] and read_labels({"labels": ["a", "b"]}, "labels") == ["a", "b"]
    assert read_labels({}, "labels") == [] and read_labels({"genre": "jazz"}, "genre") == ["jazz"]
    assert build_targets([["b"], ["a"]], ["a", "b"], multi_label=False).tolist() == [1, 0]
    assert build_targets([["b", "a"], []], ["a", "b"], multi_label=True).tolist() == [[1, 1], [0, 0]]
    with pytest.raises(DataError, match=r"1 label\(s\) outside the task's 2 classes, e.g. \['c'\]"):
        build_targets([["c"]], ["a", "b"], multi_label=False)
    with pytest.raises(DataError, match="without exactly one label"):
        build_targets([["a", "b"]], ["a", "b"], multi_label=False)


class _TableTextModel(nn.Module):
    """encode_text returns a fixed vector per text (the tokenizer maps a text to its row)."""

    def __init__(self, vectors: torch.Tensor) -> None:
        super().__init__()
        self.vectors = nn.Parameter(vectors)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.vectors[input_ids[:, 0]]


def test_prompt_ensembling_averages_normalised_embeddings_and_renormalises():
    texts = ["a dog", "the dog", "a cat", "the cat"]
    vectors = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-2.0, 0.0]])
    model = _TableTextModel(vectors)
    tokenizer = lambda batch: {"input_ids": torch.tensor([[texts.index(t)] for t in batch]),  # noqa: E731
                               "attention_mask": torch.ones(len(batch), 1, dtype=torch.long)}
    prompts = [["a dog", "the dog"], ["a cat", "the cat"]]
    ensembled = embed_class_prompt_sets(model, tokenizer, prompts, ensemble=True)
    # dog: mean([1, 0], [0, 1]) = [.5, .5] -> [.707, .707]; cat: mean([.707, .707], [-1, 0]) -> normalised.
    cat = torch.tensor([0.7071 - 1, 0.7071]) / 2
    assert torch.allclose(ensembled, torch.stack([torch.tensor([0.7071, 0.7071]), cat / cat.norm()]), atol=1e-4)
    first_only = embed_class_prompt_sets(model, tokenizer, prompts, ensemble=False)
    assert torch.allclose(first_only, F.normalize(vectors[[0, 2]], dim=-1))


def test_embedding_restores_each_submodules_mode():
    # A training model with a frozen tower kept in eval mode (as ClapPretraining does).
    model = _TableTextModel(torch.eye(2))
    model.tower = nn.Dropout(0.5).eval()
    seen = []

    def encode_text(input_ids, attention_mask):
        seen.append((model.training, model.tower.training))
        return model.vectors[input_ids[:, 0]]

    model.encode_text = encode_text
    tokenizer = lambda batch: {"input_ids": torch.zeros(len(batch), 1, dtype=torch.long),  # noqa: E731
                               "attention_mask": torch.ones(len(batch), 1, dtype=torch.long)}
    embed_class_prompt_sets(model, tokenizer, [["x"]], ensemble=False)
    assert seen == [(False, False)] and model.training and not model.tower.training


def _blobs(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=generator) * 3
    targets = torch.arange(n_classes).repeat_interleave(n_per_class)
    features = centres[targets] + spread * torch.randn(len(targets), dim, generator=generator)
    return features, targets


def test_linear_probe_separates_separable_embeddings_in_every_fold():
    features, targets = _blobs(30, 4, 16, spread=0.3)
    folds = [1 + i % 5 for i in range(len(targets))]
    result = cross_validate_probe(features, targets, folds)
    assert list(result.fold_accuracy) == [1, 2, 3, 4, 5]
    assert result.mean_accuracy == 1.0
    # Labels unrelated to the features: held-out accuracy stays near chance (0.25), so the probe can fail.
    shuffled = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(1))]
    assert cross_validate_probe(features, shuffled, folds).mean_accuracy < 0.5
    assert train_test_probe(features[::2], targets[::2], features[1::2], targets[1::2], 4) == 1.0


def test_five_fold_protocol_uses_each_fold_once_as_test():
    folds = [3, 1, 5, 2, 4, 1, 2, 3, 4, 5, 5]
    splits = fold_splits(folds)
    assert [fold for fold, _, _ in splits] == [1, 2, 3, 4, 5]
    tested = torch.cat([test for _, _, test in splits]).sort().values
    assert tested.tolist() == list(range(len(folds)))  # every clip is tested exactly once
    for fold, train, test in splits:
        assert all(folds[i] == fold for i in test.tolist()) and all(folds[i] != fold for i in train.tolist())
        assert len(train) + len(test) == len(folds)
    with pytest.raises(DataError, match="no fold number"):
        fold_splits([1, None])
    with pytest.raises(DataError, match="at least 2 folds"):
        fold_splits([1, 1])


def test_fold_filter_for_finetuning():
    sample = {"json": json.dumps({"fold": 3}).encode()}
    assert FoldFilter("fold", [3], keep=True)(sample) and not FoldFilter("fold", [3], keep=False)(sample)
    assert FoldFilter("fold", ["2", "4"], keep=False)(sample) and FoldFilter(None, None, keep=True)(sample)


def test_embedding_cache_round_trip(tmp_path):
    embedded = EmbeddedSplit(F.normalize(torch.randn(3, 4), dim=-1), ["a", "b", "c"],
                             [{"labels": ["x"], "fold": 1}, {"pitch": 60}, {"text": ["one", "two"]}])
    cache = EmbeddingCache(tmp_path / "cache", "abc123")
    assert cache.load("esc50", "test") is None
    cache.save("esc50", "test", embedded)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["esc50-test-abc123.pt"]
    loaded = cache.load("esc50", "test")
    assert torch.equal(loaded.audio_emb, embedded.audio_emb) and loaded.keys == embedded.keys
    assert loaded.metas == embedded.metas
    assert EmbeddingCache(tmp_path / "cache", "other").load("esc50", "test") is None  # another checkpoint
    (tmp_path / "cache" / "esc50-test-abc123.pt").write_bytes(b"truncated")
    assert cache.load("esc50", "test") is None  # unreadable: recomputed, not fatal
    EmbeddingCache(None, "abc123").save("esc50", "test", embedded)  # disabled: a no-op


def test_caption_table_keeps_every_caption():
    captions, owner = caption_table([{"text": ["a", "b", "c", "d", "e"]}, {"text": ["f"]}])
    assert captions == list("abcdef") and owner.tolist() == [0] * 5 + [1]
    with pytest.raises(DataError, match="no caption"):
        caption_table([{"id": "x", "text": []}])


def test_result_rows_compare_with_the_paper():
    dcase = TaskResult(get_task("dcase2017_task4"), {"F1": 0.4, "mAP": 0.5}, num_clips=10)
    skipped = TaskResult(get_task("vocalsound"), status="skipped: no shards at /d/vocalsound/test")
    rows = result_rows([dcase, skipped])
    assert rows[0] == {"task": "dcase2017_task4", "metric": "F1", "ours": "0.4000", "paper": "0.4660",
                       "delta": "-0.0660", "clips": 10}
    assert rows[1]["metric"] == "mAP" and rows[1]["paper"] == "" and rows[1]["delta"] == ""
    assert rows[2] == {"task": "vocalsound", "metric": "acc", "ours": "skipped: no shards at /d/vocalsound/test",
                       "paper": "0.8000", "delta": "", "clips": 0}


def test_captioning_rows_put_cider_beside_the_papers_spider_without_a_delta(tmp_path):
    from clap_lightning.eval.report import plot_comparison

    spec = get_task("audiocaps_captioning")
    result = TaskResult(spec, {"CIDEr-D": 1.25, "BLEU_4": 0.2, "ROUGE_L": 0.4}, num_clips=7)
    rows = result_rows([result])
    assert rows[0] == {"task": "audiocaps_captioning", "metric": "CIDEr-D (paper: SPIDEr)", "ours": "1.2500",
                       "paper": "0.4550", "delta": "", "clips": 7}
    assert [(r["metric"], r["paper"], r["delta"]) for r in rows[1:]] == [("BLEU_4", "", ""), ("ROUGE_L", "", "")]
    assert spec.headline(result.metrics) == ("CIDEr-D (paper: SPIDEr)", 1.25)
    assert get_task("esc50").headline({"acc": 0.9}) == ("acc", 0.9)
    assert plot_comparison(rows, tmp_path / "r.png", "t").read_bytes()[:4] == b"\x89PNG"  # CIDEr-D > 1 fits


def test_callback_log_keys_and_config_errors():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.7]])
    metrics = retrieval_metrics(sim, torch.tensor([0, 1, 1]))
    logged = TaskEvalCallback.metrics_to_log(get_task("clotho_a2t"), metrics)
    assert logged == {f"val/clotho_a2t/{m}": metrics[f"a2t_{k}"]
                      for m, k in (("R@1", "r@1"), ("R@5", "r@5"), ("R@10", "r@10"), ("mAP@10", "mAP@10"))}
    assert TaskEvalCallback.metrics_to_log(get_task("demo"), {"acc": 0.5}) == {"val/demo/acc": 0.5}
    with pytest.raises(ConfigError, match="eval.tasks: unknown task 'nope'; known: "):
        TaskEvalCallback(EvalConfig(tasks="demo,nope", data="/d"))
    with pytest.raises(ConfigError, match="every_n_val"):
        TaskEvalCallback(EvalConfig(tasks="demo", data="/d", every_n_val=0))
    with pytest.raises(ConfigError, match="eval.data is empty"):
        TaskEvalCallback(EvalConfig(tasks="demo"))
    assert load_config(ExperimentConfig, None, ["eval.tasks=demo", "eval.every_n_val=2"]).eval.every_n_val == 2
    with pytest.raises(ConfigError, match="eval.taks"):
        load_config(ExperimentConfig, None, ["eval.taks=demo"])
