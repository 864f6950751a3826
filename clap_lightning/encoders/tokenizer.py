"""Caption tokenization: load a tokenizer from a local path, append end-of-text, pad per batch."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

from clap_lightning.data.schema import read_captions
from clap_lightning.data.sources import resolve_shards
from clap_lightning.data.stream import single_pass
from clap_lightning.errors import ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_PREFIX = "builtin:"
EOS_TOKEN = "<|endoftext|>"


def resolve_tokenizer_path(name_or_path: str) -> str:
    """Map `builtin:<name>` to the tokenizer shipped in the package; pass anything else through."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        path = ASSETS / "tokenizers" / name_or_path[len(BUILTIN_PREFIX) :]
        if not path.is_dir():
            known = sorted(p.name for p in (ASSETS / "tokenizers").iterdir())
            raise ConfigError(f"unknown built-in tokenizer '{name_or_path}'; known: {', '.join(known)}")
        return str(path)
    return name_or_path


class CaptionTokenizer:
    """Turn captions into `input_ids` and `attention_mask` padded to the longest caption.

    Pickles cleanly, so loader workers can tokenize. With `append_eos` (GPT2, as CLAP 2023)
    the text is truncated to `max_length - 1` tokens and `<|endoftext|>` is appended, so the
    pooled token is always present; otherwise the tokenizer's own special tokens are used
    (BERT's [CLS] ... [SEP]).

    Args:
        name_or_path: a local tokenizer directory, `builtin:<name>`, or a hub id (needs network).
        max_length: maximum tokens per caption, special tokens included.
        append_eos: append the end-of-text token (decoder-only text encoders).
        space_before_eos: end the text with a space before appending the end-of-text token, as
            msclap's `caption + ' <|endoftext|>'` does (GPT2 then emits a lone space token, id 220,
            before eos; the released CLAP 2023 weights were used that way).
    """

    def __init__(self, name_or_path: str, max_length: int = 77, append_eos: bool = True,
                 space_before_eos: bool = False) -> None:
        from transformers import AutoTokenizer

        self.name_or_path = name_or_path
        self.max_length = max_length
        self.append_eos = append_eos
        self.space_before_eos = space_before_eos
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer_path(name_or_path))
        if append_eos and self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer '{name_or_path}' has no end-of-text token; cannot append one")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:  # GPT2 has no pad token; padding is masked out, any id will do
            self.pad_id = self.tokenizer.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.append_eos:
            texts = [text + " " for text in texts] if self.space_before_eos else list(texts)
            ids = self.tokenizer(texts, add_special_tokens=False, truncation=True,
                                 max_length=self.max_length - 1)["input_ids"]
            ids = [row + [self.tokenizer.eos_token_id] for row in ids]
        else:
            ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return pad_batch(ids, self.pad_id)


def pad_batch(ids: Iterable[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to the longest one; the mask marks real tokens."""
    ids = list(ids)
    length = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000) -> None:
    """Train a small byte-level BPE tokenizer with GPT2's conventions and save it.

    Used to make the built-in `tiny-bpe` tokenizer from the demo captions, so tests and the
    demo never download GPT2's 50k vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN)
    fast.save_pretrained(str(out_dir))


def iter_shard_captions(spec: str):
    """Yield every caption stored in the shards of `spec` (any form `resolve_shards` accepts).

    Read with the loader's shard reader and caption rule; damaged shards and unreadable jsons
    are left out, as the loader would leave them out.
    """
    for sample in single_pass(resolve_shards(spec).urls, Counter()):
        try:
            yield from read_captions(json.loads(sample["json"]))
        except (KeyError, ValueError, RecursionError):
            continue


def main(argv=None) -> None:
    """`python -m clap_lightning.encoders.tokenizer SHARDS OUT_DIR [--vocab-size N]`."""
    parser = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer on the captions of shards.")
    parser.add_argument("shards", help="shard directory, brace pattern or list")
    parser.add_argument("out", help="directory to save the tokenizer to")
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args(argv)
    train_bpe_tokenizer(iter_shard_captions(args.shards), args.out, args.vocab_size)


if __name__ == "__main__":
    main()
