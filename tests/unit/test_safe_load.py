"""One safe checkpoint loader and one message helper, used everywhere."""

import pickle
import re
from pathlib import Path

import pytest
import torch

from clap_lightning.checkpoint import load_state_or_refuse, safe_load
from clap_lightning.errors import CheckpointError, DataError, first_line

PACKAGE = Path(__file__).resolve().parents[2] / "clap_lightning"


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True


def test_safe_load_reads_tensors_and_refuses_the_rest_in_one_line(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2), "meta": ["a", 1]}, good)
    assert torch.equal(safe_load(good)["w"], torch.ones(2))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Payload()))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    for path in (evil, truncated, noise):
        with pytest.raises(CheckpointError) as err:
            safe_load(path)
        assert str(err.value).startswith(f"cannot load {path} with torch.load(weights_only=True): ")
        assert "\n" not in str(err.value)
    assert not _Payload.ran
    with pytest.raises(DataError, match=r"^embedding cache not found: .*none\.pt$"):
        safe_load(tmp_path / "none.pt", error=DataError, what="embedding cache")


def test_torch_load_is_called_only_by_safe_load():
    callers = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if re.search(r"\btorch\.load\(", p.read_text())]
    assert callers == ["checkpoint.py"]


def test_state_mismatch_is_one_line_naming_the_expectation(tmp_path):
    module = torch.nn.Linear(2, 3)
    with pytest.raises(CheckpointError, match=r"^x\.ckpt does not match the configured model: .*size mismatch"):
        load_state_or_refuse(module, {"weight": torch.zeros(4, 2), "bias": torch.zeros(3)}, "x.ckpt",
                             "the configured model")
    with pytest.raises(CheckpointError, match="does not match its stored architecture: .*Missing key"):
        load_state_or_refuse(module, {"weight": torch.zeros(3, 2)}, "x.ckpt")


def test_first_line():
    assert first_line(ValueError("bad thing\n  detail\n")) == "bad thing"
    assert first_line(OSError()) == "OSError"
    assert first_line(RuntimeError("\n\n  spaced out  \nmore")) == "spaced out"
