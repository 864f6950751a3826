"""Captioner: loss masking on hand-computed examples, frozen decoder, greedy/beam decoding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clap_lightning.models.captioner import (IGNORE_INDEX, Captioner, CaptionerConfig, build_caption_labels,
                                             caption_audio, caption_loss)
from clap_lightning.models.decoding import DecodingConfig, beam_search, greedy_decode
from clap_lightning.models.mapper import MapperConfig


def tiny_captioner(tokenizer_dir: str, clap=None, seed: int = 0) -> Captioner:
    torch.manual_seed(seed)
    mapper = MapperConfig(name="transformer", d_audio=8, n_embd=16, prefix_length=3, clip_length=2, num_layers=1,
                          num_heads=2)
    config = CaptionerConfig(mapper=mapper, tokenizer=tokenizer_dir, n_layer=2, n_head=2, n_positions=64,
                             max_caption_tokens=12)
    return Captioner(config, clap=clap).eval()


def test_caption_loss_hand_computed():
    # B=1, prefix 2, caption of 3 slots of which 2 are real: inputs [p0, p1, t0, t1, pad], V=3.
    logits = torch.tensor([[[0.0, 0.0, 0.0],  # p0 -> predicts p1: no loss
                            [1.0, 2.0, 3.0],  # p1 -> predicts t0 = 2
                            [0.5, 0.0, -1.0],  # t0 -> predicts t1 = 0
                            [9.0, -9.0, 0.0],  # t1 -> predicts pad: no loss
                            [5.0, 5.0, 5.0]]])  # pad -> nothing
    labels = build_caption_labels(torch.tensor([[2, 0, 1]]), torch.tensor([[1, 1, 0]]), prefix_length=2)
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 2, 0, IGNORE_INDEX]]
    ce_t0 = -(3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    ce_t1 = -(0.5 - math.log(math.exp(0.5) + math.exp(0.0) + math.exp(-1.0)))
    assert caption_loss(logits, labels).item() == pytest.approx((ce_t0 + ce_t1) / 2, abs=1e-6)


def test_captioner_loss_counts_caption_tokens_only(tokenizer_dir):
    model = tiny_captioner(tokenizer_dir)
    tokens = model.tokenize(["a loud bell", "white noise over a soft hum with a rising chirp"])
    emb = torch.randn(2, 8)
    logits = model(emb, tokens["input_ids"], tokens["attention_mask"])
    p = model.config.mapper.prefix_length
    terms = []
    for b in range(2):
        n = int(tokens["attention_mask"][b].sum())
        for j in range(n):  # the token at caption slot j is predicted at sequence position p - 1 + j
            terms.append(-torch.log_softmax(logits[b, p - 1 + j], -1)[tokens["input_ids"][b, j]])
    expected = torch.stack(terms).mean()
    loss = model.compute_loss(emb, tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(loss, expected)
    # Whatever id fills the padding, the loss is the same (padding is neither input that counts nor target).
    ids = tokens["input_ids"].masked_fill(tokens["attention_mask"] == 0, 7)
    torch.testing.assert_close(model.compute_loss(emb, ids, tokens["attention_mask"]), loss)
    # The last real token is the appended end-of-text, which is a target.
    assert tokens["input_ids"][0, int(tokens["attention_mask"][0].sum()) - 1] == model.eos_id


def test_only_mapper_is_trained_by_default(tokenizer_dir):
    model = tiny_captioner(tokenizer_dir).train()
    assert not model.decoder.training  # frozen GPT2 keeps dropout off
    tokens = model.tokenize(["a loud bell"])
    model.compute_loss(torch.randn(1, 8), tokens["input_ids"], tokens["attention_mask"]).backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.mapper.parameters())


def _greedy_without_cache(model: Captioner, prefix: torch.Tensor, steps: int) -> list[list[int]]:
    out = []
    for row in prefix:
        seq, ids = row[None], []
        for _ in range(steps):
            token = model.decoder(inputs_embeds=seq).logits[0, -1].argmax()
            if token == model.eos_id:
                break
            ids.append(int(token))
            seq = torch.cat((seq, model.embed_tokens(token[None])[None]), dim=1)
        out.append(ids)
    return out


def test_greedy_matches_uncached_reference_and_beam_one(tokenizer_dir):
    model = tiny_captioner(tokenizer_dir)
    prefix = model.build_prefix(torch.randn(4, 8))
    greedy = greedy_decode(model.decoder, model.embed_tokens, prefix, model.eos_id, max_length=10)
    assert greedy == _greedy_without_cache(model, prefix, 10)
    assert any(len(ids) == 10 for ids in greedy)  # random weights rarely stop: the length cap is exercised
    for temperature in (1.0, 0.5):
        beam = beam_search(model.decoder, model.embed_tokens, prefix, model.eos_id,
                           DecodingConfig(beam_size=1, max_length=10, temperature=temperature))
        assert beam == greedy


def _sequence_logprob(model: Captioner, prefix: torch.Tensor, ids: list[int]) -> float:
    seq = torch.cat((prefix[None], model.embed_tokens(torch.tensor(ids[:-1]))[None]), dim=1)
    logp = torch.log_softmax(model.decoder(inputs_embeds=seq).logits[0, prefix.shape[0] - 1:].float(), -1)
    return float(sum(logp[i, t] for i, t in enumerate(ids)).detach())


def test_full_width_beam_is_exhaustive_search(tokenizer_dir):
    """With beam = vocabulary size and 2 steps, beam search must find the best of all sequences."""
    model = tiny_captioner(tokenizer_dir, seed=3)
    model.decoder.lm_head.weight.data[model.eos_id] += 0.5  # make stopping early a real contender
    prefix = model.build_prefix(torch.randn(1, 8))
    vocab = model.decoder.config.vocab_size
    config = DecodingConfig(beam_size=vocab, max_length=2, length_penalty=1.0)
    found = beam_search(model.decoder, model.embed_tokens, prefix, model.eos_id, config)[0]
    with torch.no_grad():
        first = torch.log_softmax(model.decoder(inputs_embeds=prefix).logits[0, -1], -1)
        seqs = torch.cat((prefix.expand(vocab, -1, -1), model.embed_tokens(torch.arange(vocab))[:, None]), dim=1)
        second = torch.log_softmax(model.decoder(inputs_embeds=seqs).logits[:, -1], -1)  # [V, V]
    best, best_ids = float("-inf"), None
    for a in range(vocab):  # sequences stopping at step 1 have length 1; others length 2
        cand = [(first[a].item(), [a] if a == model.eos_id else None)]
        if a != model.eos_id:
            b = int(second[a].argmax())
            cand = [((first[a] + second[a, b]).item() / 2, [a, b])]
        for score, ids in cand:
            if score > best:
                best, best_ids = score, ids
    expected = [t for t in best_ids if t != model.eos_id]
    assert found == expected
    assert _sequence_logprob(model, prefix[0], best_ids) == pytest.approx(best * len(best_ids), abs=1e-4)


def test_beam_search_is_batch_independent(tokenizer_dir):
    model = tiny_captioner(tokenizer_dir, seed=1)
    prefix = model.build_prefix(torch.randn(3, 8))
    config = DecodingConfig(beam_size=3, max_length=8, length_penalty=0.7, temperature=0.8)
    together = beam_search(model.decoder, model.embed_tokens, prefix, model.eos_id, config)
    alone = [beam_search(model.decoder, model.embed_tokens, prefix[i:i + 1], model.eos_id, config)[0]
             for i in range(3)]
    assert together == alone


class LinearClap(nn.Module):
    """A stand-in CLAP: encode_audio is a fixed linear map of the waveform."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(20, 8)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(audio)


def test_caption_audio_from_waveforms_or_embeddings(tokenizer_dir):
    clap = LinearClap()
    model = tiny_captioner(tokenizer_dir, clap=clap)
    assert all(not p.requires_grad for p in clap.parameters())
    wave = torch.randn(5, 20)
    decoding = DecodingConfig(beam_size=2, max_length=6)
    from_wave = caption_audio(model, audio=wave, decoding=decoding, batch_size=2)
    from_emb = caption_audio(model, audio_emb=clap.encode_audio(wave), decoding=decoding)
    assert from_wave == from_emb and len(from_wave) == 5 and all(isinstance(c, str) for c in from_wave)
    with pytest.raises(ValueError, match="exactly one"):
        caption_audio(model)
    with pytest.raises(ValueError, match=r"expected audio embeddings \[B, 8\]"):
        caption_audio(model, audio_emb=torch.randn(2, 9))
