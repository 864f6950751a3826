"""Parity with msclap 1.3.4: its state dicts convert into our CLAP and give the same embeddings.

The reference (`tests/fixtures/msclap_parity.pt`) was made by `tests/fixtures/make_msclap_parity.py`
from msclap's own modules (small HTSAT/GPT2, random weights, transformers 4.x); nothing here
imports msclap. `msclap_keys.json` holds the full-size release layouts.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from clap_lightning.config import ExperimentConfig, config_from
from clap_lightning.convert.msclap import build_clap_from_msclap, load_strict, map_clap_keys
from clap_lightning.errors import CheckpointError
from clap_lightning.models.clap import CLAP

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOLERANCE = 1e-4  # max abs, fp32


def _load_script():
    spec = importlib.util.spec_from_file_location("make_msclap_parity", FIXTURES / "make_msclap_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = torch.load(FIXTURES / "msclap_parity.pt", weights_only=True)
    state = dict(ref["state_dict"])
    state.update({k: torch.zeros(shape) for k, shape in ref["derived_shapes"].items()})  # see the script
    ref["msclap_state"] = state
    return ref


@pytest.fixture(scope="module")
def converted(reference) -> CLAP:
    config = config_from(ExperimentConfig, {"model": reference["model_config"]})
    return build_clap_from_msclap(reference["msclap_state"], "2023", config)


def test_audio_embeddings_match_msclap(converted, reference):
    audio = torch.from_numpy(_load_script().make_audio())
    with torch.no_grad():
        latent = converted.audio_encoder(audio)
        audio_emb = converted.encode_audio(audio)
    assert (latent - reference["audio_latent"]).abs().max() <= TOLERANCE
    assert (audio_emb - reference["audio_emb"]).abs().max() <= TOLERANCE
    assert reference["audio_emb"].abs().mean() > 0.1  # a real signal, not two zero vectors


def test_text_embeddings_match_msclap_with_either_padding(converted, reference):
    ids, mask = reference["input_ids"], reference["attention_mask"]
    plain = slice(0, 4)  # captions without "!"
    with torch.no_grad():
        fixed = converted.encode_text(ids, mask)  # msclap's fixed 77-token padding
        width = int(mask.sum(1).max())
        per_batch = converted.encode_text(ids[:, :width], mask[:, :width])  # ours: pad to the longest
    assert (fixed[plain] - reference["text_emb"][plain]).abs().max() <= TOLERANCE
    assert (per_batch - fixed).abs().max() <= TOLERANCE


def test_exclamation_mark_caption_pools_true_eos_unlike_msclap(converted, reference):
    """msclap pools at (number of non-zero ids - 1); "!" is GPT2 id 0, so it pools too early.

    Row 4 is `17 ! ! 45 301 ! <eos>`: msclap counts 4 non-zero ids and pools position 3 (`45`);
    the caption's end-of-text token is at position 6. Ours pools position 6 from the mask.
    """
    ids, mask, last = reference["input_ids"], reference["attention_mask"], reference["last_index"]
    row = 4
    msclap_index = int((ids[row] != 0).sum() - 1)
    assert (msclap_index, int(last[row])) == (3, 6)
    with torch.no_grad():
        ours = converted.encode_text(ids, mask)
        hidden = converted.text_encoder.base(input_ids=ids, attention_mask=mask).last_hidden_state
        at_msclap_index = converted.text_projection(hidden[row, msclap_index])
    # Ours equals msclap's model evaluated at the true end-of-text position...
    assert (ours[row] - reference["text_emb_true_eos"][row]).abs().max() <= TOLERANCE
    # ...while msclap's own output is the embedding of an earlier token, far from it.
    assert (at_msclap_index - reference["text_emb"][row]).abs().max() <= TOLERANCE
    assert (ours[row] - reference["text_emb"][row]).abs().max() > 0.1
    # Without "!" both poolings agree (checked above); the true-eos reference says so too.
    torch.testing.assert_close(reference["text_emb"][:4], reference["text_emb_true_eos"][:4])


def test_logit_scale_becomes_shape_one(converted, reference):
    assert reference["msclap_state"]["logit_scale"].shape == ()
    assert converted.logit_scale.shape == (1,)
    assert converted.logit_scale.item() == pytest.approx(3.0)


def test_clapcap_parts_convert(reference, tmp_path):
    """The clapcap layout splits into audio side, mapper (prefix stripped) and GPT2 LM."""
    from clap_lightning.convert.msclap import convert_clapcap

    state = {f"clap.{k[len('audio_encoder.'):]}": v for k, v in reference["msclap_state"].items()
             if k.startswith("audio_encoder.")}
    state.update(reference["clapcap_state_dict"])
    path = tmp_path / "clapcap.pth"
    torch.save({"model": state}, path)
    config_path = tmp_path / "small.yaml"
    config_path.write_text(json.dumps(reference["model_config"]))
    parts = convert_clapcap(path, model_config=str(config_path))
    assert parts["mapper_config"] == reference["mapper_config"]
    assert set(parts["mapper"]) == {k[len("clap_project."):] for k in reference["clapcap_state_dict"]
                                    if k.startswith("clap_project.")}
    assert "lm_head.weight" in parts["gpt"] and "transformer.wte.weight" in parts["gpt"]
    model = CLAP(config_from(ExperimentConfig, {"model": reference["model_config"]}).model).eval()
    model.load_state_dict(parts["clap"], strict=False)
    audio = torch.from_numpy(_load_script().make_audio())
    with torch.no_grad():
        assert (model.encode_audio(audio) - reference["audio_emb"]).abs().max() <= TOLERANCE


@pytest.mark.parametrize("variant, config_name", [("2023", "msclap_2023"), ("2022", "msclap_2022")])
def test_full_size_release_layout_loads_strictly(variant, config_name):
    """msclap's full-size key names and shapes fit our configs exactly (shapes only: meta device)."""
    from clap_lightning.convert.msclap import load_model_config

    layout = json.loads((FIXTURES / "msclap_keys.json").read_text())[variant]
    state = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    with torch.device("meta"):
        model = CLAP(load_model_config(config_name).model)
    mapped, unmapped = map_clap_keys(state, variant)
    load_strict(model, mapped, unmapped, f"msclap {variant}")  # raises on any difference
    assert len(mapped) == len(model.state_dict())


def test_full_size_layout_of_another_release_is_refused():
    from clap_lightning.convert.msclap import load_model_config

    layout = json.loads((FIXTURES / "msclap_keys.json").read_text())["2022"]
    state = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    with torch.device("meta"):
        model = CLAP(load_model_config("msclap_2023").model)
    mapped, unmapped = map_clap_keys(state, "2022")
    with pytest.raises(CheckpointError, match=r"unexpected .*\(\+\d+ more\); missing .*\(\+\d+ more\)"):
        load_strict(model, mapped, unmapped, "msclap 2022 into 2023")


def test_clapcap_mapper_matches_msclap(reference):
    """msclap's clapcap mapper (random weights) and ours, loaded from the same `clap_project.*` keys."""
    from clap_lightning.models.mapper import MapperConfig, build_mapper

    mapper = build_mapper(MapperConfig(**reference["mapper_config"])).eval()
    prefix = "clap_project."
    mapper.load_state_dict({k[len(prefix):]: v for k, v in reference["clapcap_state_dict"].items()
                            if k.startswith(prefix)})
    with torch.no_grad():
        out = mapper(reference["mapper_input"])
    assert (out - reference["mapper_output"]).abs().max() <= 1e-4
