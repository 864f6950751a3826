"""Parity with LAION-CLAP's own code: a LAION-format checkpoint converted here embeds as `laion_clap` did.

The fixture (tests/fixtures/make_laion_parity.py, run once with laion_clap 1.1.7) holds LAION's
embeddings of three clips (3 s, exactly 10 s, 14.5 s) through its int16 round trip,
`get_audio_features` and `get_audio_embedding`, unfused (`rand_trunc` + `repeatpad`) and fused
(`aff_2d`), and of two token-id captions; the weights are regenerated from the seed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clap_lightning.convert.hf import build_from_laion
from tests.fixtures.make_laion_parity import CLIP_SECONDS, fill_state, make_audio, token_batch

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "laion_parity.pt"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module", params=["unfused", "fused"])
def converted(request, fixture, tokenizer_dir, tmp_path_factory):
    expected = fixture["models"][request.param]
    path = tmp_path_factory.mktemp("laion") / f"{request.param}.pt"
    state = fill_state(expected["shapes"], fixture["seed"])
    torch.save({"epoch": 45, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # as LAION saves
    model, _, _ = build_from_laion(path, tokenizer=tokenizer_dir)
    return request.param, model, expected


@pytest.mark.parametrize("clip", list(CLIP_SECONDS))
def test_audio_embeddings_match_laion_clap(converted, clip):
    kind, model, expected = converted
    wave = torch.from_numpy(make_audio(clip))
    ours = model.embed_audio(wave, sample_rate=48000, long_audio="fusion" if kind == "fused" else "first")[0]
    # 1e-6, not the 1e-4 asked for: measured 7e-8, and leaving out the int16 rounding alone costs 4e-6 to 1.5e-5
    assert (ours - expected["audio"][clip]).abs().max() <= 1e-6, (ours - expected["audio"][clip]).abs().max()


def test_text_embeddings_match_laion_clap(converted):
    _, model, expected = converted
    ids, mask = token_batch()
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.encode_text(ids, mask), dim=-1)
    assert (ours - expected["text"]).abs().max() <= 1e-6
