"""LAION-Audio-630K-style shards train as they are: `text` a string, labels in `tag`, extra `original_data` kept."""

import json

import numpy as np

from clap_lightning.data.pipeline import ClipDecoder, Collate
from clap_lightning.data.schema import read_labels
from clap_lightning.encoders.tokenizer import CaptionTokenizer
from tests.shard_factory import RATE, encode, tone


def laion_sample(key: str, **fields) -> dict:
    meta = {"text": "a dog barks twice", "tag": ["Dog", "Bark"], "original_data": {"title": "dog.wav", "fsid": 7},
            **fields}
    return {"__key__": key, "flac": encode(tone(0.5)), "json": json.dumps(meta).encode()}


def test_laion_style_samples_give_one_caption_tag_labels_and_keep_original_data(tokenizer_dir):
    decoder = ClipDecoder(RATE, RATE // 2, "repeat", is_train=True)
    samples = [decoder(laion_sample(f"k{i}"), np.random.default_rng(i)) for i in range(2)]
    assert all(s is not None for s in samples) and not decoder.skipped
    batch = Collate(CaptionTokenizer(tokenizer_dir, max_length=16), "labels")(samples)
    assert batch["captions"] == ["a dog barks twice"] * 2  # one caption, not its letters
    assert batch["labels"] == [["Dog", "Bark"]] * 2  # `tag` read when `labels` is absent
    assert samples[0]["meta"]["original_data"] == {"title": "dog.wav", "fsid": 7}
    assert read_labels({"labels": ["x"], "tag": ["y"]}, "labels") == ["x"]  # `labels` wins when present
    assert read_labels({"tag": ["y"]}, "genre") == []  # the fallback is only for the default field
