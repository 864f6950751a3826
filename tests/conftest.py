"""Shared fixtures: a tokenizer trained in-process, so no test touches a model hub."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("a loud quiet high low pitched sine tone square wave bell chord noise white pink brown rising falling "
         "chirp pulse train tremolo vibrato sound of this is the dog barks rain over hum soft short long "
         "someone plays beep clicks fast slow buzzing ringing sweep hiss rumble").split()


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    """A byte-level BPE tokenizer with GPT2's conventions, trained on a few hundred captions."""
    from clap_lightning.encoders.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8)) for i in range(300)]
    train_bpe_tokenizer(texts, out, vocab_size=400)
    return str(out)
