"""Caption metrics against pycocoevalcap values on the same captions (tests/fixtures/caption_metric_refs.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clap_lightning.eval.caption_metrics import (compute_caption_metrics, compute_cider_d, compute_rouge_l,
                                                 ptb_tokenize, unavailable_metrics)

REFS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "caption_metric_refs.json").read_text())
CANDIDATES = [clip["candidate"] for clip in REFS["clips"]]
REFERENCES = [clip["references"] for clip in REFS["clips"]]


def test_ptb_tokenize_matches_stanford_ptb_tokenizer():
    assert len(REFS["ptb_tokenized"]) > 70
    for raw, expected in REFS["ptb_tokenized"].items():
        assert ptb_tokenize(raw) == expected, raw


def test_corpus_scores_match_pycocoevalcap():
    ours = compute_caption_metrics(CANDIDATES, REFERENCES)
    assert set(ours) == set(REFS["scores"])
    for name, value in REFS["scores"].items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_pretokenised_scores_and_per_clip_values_match():
    tok = REFS["ptb_tokenized"]
    cands = [tok[c] for c in CANDIDATES]
    refs = [[tok[r] for r in rs] for rs in REFERENCES]
    ours = compute_caption_metrics(cands, refs, tokenize=False)
    for name, value in REFS["scores"].items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    assert compute_cider_d(cands, refs) == pytest.approx(REFS["per_clip"]["CIDEr-D"], abs=1e-6)
    assert compute_rouge_l(cands, refs) == pytest.approx(REFS["per_clip"]["ROUGE_L"], abs=1e-6)


def test_hand_checked_extremes():
    same = compute_caption_metrics(["a dog barks", "rain falls"], [["a dog barks"], ["rain falls"]])
    assert same["BLEU_1"] == pytest.approx(1.0) and same["ROUGE_L"] == pytest.approx(1.0)
    # BLEU-3/4 of two-word captions have no n-grams to match: upstream's smoothing gives ~0 there.
    disjoint = compute_caption_metrics(["cats meow"], [["a dog barks"]])
    assert disjoint["BLEU_1"] < 1e-6 and disjoint["ROUGE_L"] == 0.0 and disjoint["CIDEr-D"] == 0.0


def test_unavailable_metrics_are_not_reported():
    reasons = unavailable_metrics()
    assert set(reasons) == {"METEOR", "SPICE", "SPIDEr"} and all(reasons.values())
    assert not set(reasons) & set(compute_caption_metrics(["a dog"], [["a dog"]]))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one candidate per reference list"):
        compute_caption_metrics(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one reference"):
        compute_caption_metrics(["a"], [[]])
