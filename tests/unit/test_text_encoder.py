import pytest
import torch

from clap_lightning.encoders.registry import TEXT_ENCODERS, build_caption_tokenizer, build_text_encoder
from clap_lightning.encoders.text import gather_last_token
from clap_lightning.encoders.tokenizer import CaptionTokenizer

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "max_length": 16}


def test_tokenizer_appends_eos_pads_per_batch_and_truncates(tokenizer_dir):
    tok = CaptionTokenizer(tokenizer_dir, max_length=16)
    eos = tok.tokenizer.eos_token_id
    batch = tok(["a loud sine tone", "a dog barks over a soft hum and rain " * 5])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[1] == 16  # the long caption is truncated to max_length, eos included
    short_len = int(mask[0].sum())
    assert short_len < 16 and ids[0, short_len - 1] == eos  # eos right after the real tokens
    assert ids[1, 15] == eos and mask[1].all()
    assert tok(["a loud sine tone"])["input_ids"].shape[1] == short_len  # padded per batch, not to 77


def test_pooling_uses_mask_not_token_ids():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert gather_last_token(hidden, mask).flatten().tolist() == [2.0, 7.0]
    with pytest.raises(ValueError, match="no tokens"):
        gather_last_token(hidden, torch.zeros(2, 4, dtype=torch.long))


def test_gpt2_caption_with_exclamation_mark_pools_eos(tokenizer_dir):
    """msclap pads with '!' and counts non-zero ids; a caption containing '!' must still pool its eos."""
    encoder = build_text_encoder("gpt2", {"tokenizer": tokenizer_dir, **TINY}).eval()
    tok = build_caption_tokenizer("gpt2", {"tokenizer": tokenizer_dir, **TINY})
    alone = tok(["a loud bell!!"])
    batch = tok(["a loud bell!!", "a long soft rumble over rain and hum"])
    with torch.no_grad():
        emb_alone = encoder(**alone)
        emb_batch = encoder(**batch)
    assert emb_alone.shape == (1, 32)
    torch.testing.assert_close(emb_alone[0], emb_batch[0], atol=1e-5, rtol=1e-5)


def test_unknown_text_encoder_and_bad_key():
    with pytest.raises(ValueError, match="unknown text encoder 'gtp2'; known: .*gpt2"):
        build_text_encoder("gtp2", {})
    with pytest.raises(ValueError, match="n_layers"):
        TEXT_ENCODERS.parse_config("gpt2", {"n_layers": 2}, where="model.text_encoder")


def test_gpt2_checkpointing_gives_same_gradients_without_warnings(tokenizer_dir, recwarn):
    tok = build_caption_tokenizer("gpt2", {"tokenizer": tokenizer_dir, **TINY})
    batch = tok(["a loud sine tone", "a long soft rumble over rain and hum"])
    grads = []
    for use_checkpointing in (False, True):
        torch.manual_seed(3)
        encoder = build_text_encoder("gpt2", {"tokenizer": tokenizer_dir, **TINY, "dropout": 0.0,
                                              "use_checkpointing": use_checkpointing}).train()
        encoder(**batch).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])
    # Neither the deprecated checkpointing call nor a use_cache-under-checkpointing complaint.
    noisy = [str(w.message) for w in recwarn if "checkpointing" in str(w.message) or "use_cache" in str(w.message)]
    assert not noisy, noisy
