"""BERT, RoBERTa and CLIP-text encoders: tiny models, tokenizers made here, nothing downloaded."""

import pytest
import torch

from clap_lightning.encoders.registry import TEXT_ENCODERS, build_caption_tokenizer, build_text_encoder
from tests.conftest import WORDS

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_length": 24,
        "dropout": 0.0}
CAPTIONS = ["a loud sine tone", "the dog barks over a soft hum and rain while someone plays a bell"]


def _bpe_dir(out, bos: str, eos: str, pad: str, extra: tuple = ()) -> str:
    """A byte-level BPE trained on WORDS with `bos $A eos` added around every caption."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([bos, eos, pad, *extra]))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))], trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad,
                            unk_token=pad).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def bert_tokenizer_dir(tmp_path_factory) -> str:
    """A WordPiece (BERT) tokenizer from a vocab file written here."""
    from transformers import BertTokenizerFast

    out = tmp_path_factory.mktemp("bert_tok")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + ["##s", "##ing", "while"]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def roberta_tokenizer_dir(tmp_path_factory) -> str:
    return _bpe_dir(tmp_path_factory.mktemp("roberta_tok"), "<s>", "</s>", "<pad>", ("<unk>", "<mask>"))


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory) -> str:
    # CLIP pads with its end-of-text token.
    return _bpe_dir(tmp_path_factory.mktemp("clip_tok"), "<|startoftext|>", "<|endoftext|>", "<|endoftext|>")


@pytest.fixture
def tokenizer_dirs(bert_tokenizer_dir, roberta_tokenizer_dir, clip_tokenizer_dir) -> dict:
    return {"bert": bert_tokenizer_dir, "roberta": roberta_tokenizer_dir, "clip_text": clip_tokenizer_dir}


def _options(name: str, tokenizer: str) -> dict:
    extra = {"projection_dim": 16, "max_positions": 24} if name == "clip_text" else {}
    if name == "roberta":
        extra = {"max_positions": 40}  # RoBERTa offsets positions by the pad id + 1
    return {"tokenizer": tokenizer, **TINY, **extra}


@pytest.mark.parametrize("name", ["bert", "roberta", "clip_text"])
def test_encoder_shapes_and_alone_equals_in_batch(name, tokenizer_dirs):
    options = _options(name, tokenizer_dirs[name])
    torch.manual_seed(0)
    encoder = build_text_encoder(name, options).eval()
    tokenizer = build_caption_tokenizer(name, options)
    batch = tokenizer(CAPTIONS)
    alone = tokenizer(CAPTIONS[:1])
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]  # padded per batch
    with torch.no_grad():
        emb_batch, emb_alone = encoder(**batch), encoder(**alone)
    assert emb_batch.shape == (2, encoder.out_dim)
    assert encoder.out_dim == (16 if name == "clip_text" else 32)
    torch.testing.assert_close(emb_alone[0], emb_batch[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(emb_batch[0], emb_batch[1])


@pytest.mark.parametrize("name, first, last", [("bert", "[CLS]", "[SEP]"), ("roberta", "<s>", "</s>"),
                                               ("clip_text", "<|startoftext|>", "<|endoftext|>")])
def test_tokenizers_keep_their_own_special_tokens(name, first, last, tokenizer_dirs):
    tokenizer = build_caption_tokenizer(name, _options(name, tokenizer_dirs[name]))
    batch = tokenizer(CAPTIONS)
    tokens = tokenizer.tokenizer.convert_ids_to_tokens(batch["input_ids"][0, : int(batch["attention_mask"][0].sum())])
    assert tokens[0] == first and tokens[-1] == last and tokens.count(last) == 1
    long = tokenizer([" ".join(WORDS)])  # truncated to max_length, special tokens included
    assert long["input_ids"].shape[1] == TINY["max_length"]


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_cls_pooling_and_frozen_unused_pooler(name, tokenizer_dirs):
    """msclap 2022 pools the last hidden state at position 0; the pooler is kept (keys) but frozen."""
    encoder = build_text_encoder(name, _options(name, tokenizer_dirs[name])).eval()
    batch = build_caption_tokenizer(name, _options(name, tokenizer_dirs[name]))(CAPTIONS)
    with torch.no_grad():
        hidden = encoder.base(**batch).last_hidden_state
        torch.testing.assert_close(encoder(**batch), hidden[:, 0])
    assert any(k.startswith("base.pooler.") for k in encoder.state_dict())
    assert all(not p.requires_grad for p in encoder.base.pooler.parameters())
    encoder.train()
    encoder(**batch).sum().backward()
    unused = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # nothing trainable is left without a gradient (DDP would refuse it)


def test_clip_text_pools_end_token_like_hf_pooled_output(tokenizer_dirs):
    options = _options("clip_text", tokenizer_dirs["clip_text"])
    encoder = build_text_encoder("clip_text", options).eval()
    tokenizer = build_caption_tokenizer("clip_text", options)
    batch = tokenizer(CAPTIONS)
    eos = tokenizer.tokenizer.eos_token_id
    with torch.no_grad():
        hidden = encoder.base(**batch).last_hidden_state
        first_eos = (batch["input_ids"] == eos).int().argmax(dim=1)  # HF's pooling with a real eos id
        expected = encoder.clip_text_projection(hidden[torch.arange(2), first_eos])
        torch.testing.assert_close(encoder(**batch), expected)
    assert set(k.split(".")[0] for k in encoder.state_dict()) == {"base", "clip_text_projection"}


@pytest.mark.parametrize("name", ["bert", "roberta", "clip_text"])
def test_pretrained_from_a_local_directory(name, tokenizer_dirs, tmp_path):
    options = _options(name, tokenizer_dirs[name])
    torch.manual_seed(1)
    encoder = build_text_encoder(name, options).eval()
    saved = tmp_path / name
    if name == "clip_text":  # a CLIPTextModelWithProjection directory
        from transformers import CLIPTextModelWithProjection

        full = CLIPTextModelWithProjection(encoder.base.config)
        full.text_model.load_state_dict(encoder.base.state_dict())
        full.text_projection.load_state_dict(encoder.clip_text_projection.state_dict())
        full.save_pretrained(saved)
    else:
        encoder.base.save_pretrained(saved)
    loaded = build_text_encoder(name, {**options, "pretrained": str(saved), "hidden_size": 8}).eval()
    batch = build_caption_tokenizer(name, options)(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), encoder(**batch))


def test_registry_lists_all_text_encoders_and_checks_keys():
    assert {"bert", "clip_text", "gpt2", "roberta"} <= set(TEXT_ENCODERS.names())
    with pytest.raises(ValueError, match="model.text_encoder.num_layer"):
        TEXT_ENCODERS.parse_config("bert", {"num_layer": 2}, where="model.text_encoder")


def test_vocab_size_builds_without_a_tokenizer():
    encoder = build_text_encoder("bert", {**TINY, "tokenizer": "/nonexistent", "vocab_size": 50})
    assert encoder.base.embeddings.word_embeddings.num_embeddings == 50


def test_checkpointing_gives_same_gradients(tokenizer_dirs):
    options = _options("bert", tokenizer_dirs["bert"])
    batch = build_caption_tokenizer("bert", options)(CAPTIONS)
    grads = []
    for use_checkpointing in (False, True):
        torch.manual_seed(2)
        encoder = build_text_encoder("bert", {**options, "use_checkpointing": use_checkpointing}).train()
        encoder(**batch).pow(2).sum().backward()
        grads.append(encoder.base.embeddings.word_embeddings.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
