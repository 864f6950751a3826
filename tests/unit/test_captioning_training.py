"""Training works: on a tiny synthetic captioning set, fitting the mapper lowers the caption loss and
its captions beat the constant most-common-caption baseline on CIDEr-D, measured here."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from clap_lightning.errors import CheckpointError, ConfigError, DataError
from clap_lightning.eval.caption_metrics import compute_caption_metrics
from clap_lightning.lit.caption_data import (CaptionDataModule, most_common_caption, read_embedding_cache,
                                             write_embedding_cache)
from clap_lightning.lit.captioning import CaptioningModule, evaluate_captioning, fit_captioning, load_captioner
from clap_lightning.lit.captioning_config import CaptionDataConfig, CaptioningConfig
from clap_lightning.models.captioner import CaptionerConfig
from clap_lightning.models.decoding import DecodingConfig
from clap_lightning.models.mapper import MapperConfig
from clap_lightning.config import OptimConfig, TrainerConfig, load_config

D_AUDIO = 16
CLASS_CAPTIONS = [  # class 0 is the most frequent, so the constant baseline is one of its captions
    ["a dog barks", "the dog barks loud"],
    ["rain over a soft hum", "soft rain falling"],
    ["a high pitched sine tone", "a sine tone rising"],
    ["white noise hiss", "a loud white noise"],
]
TOPICS = [" pulse", " chirp", " tremolo", " sweep"]  # single-token topic words of the stand-in LM's context
PREFIX = 4  # mapper prefix length = the stand-in LM's context length
CLIPS_PER_CLASS = {"train": [24, 12, 12, 12], "val": [4, 4, 4, 4]}


class IdentityClap(nn.Module):
    """Stands in for a frozen CLAP: the 'waveform' already is the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_audio(self, audio: torch.Tensor, audio_length: torch.Tensor) -> torch.Tensor:
        assert audio_length.tolist() == [audio.shape[1]] * len(audio)  # no "length": nothing is padding
        return audio + 0 * self.dummy


def synthetic_clips(split: str, seed: int):
    """Class-dependent random embeddings (shared centroids + per-clip noise) with templated captions."""
    centroids = torch.randn(len(CLASS_CAPTIONS), D_AUDIO, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    for c, count in enumerate(CLIPS_PER_CLASS[split]):
        for i in range(count):
            yield {"audio": centroids[c] + 0.3 * torch.randn(D_AUDIO, generator=gen),
                   "texts": CLASS_CAPTIONS[c], "key": f"{split}-{c}-{i}"}


def pretrain_tiny_gpt2(tokenizer_dir: str, out_dir) -> str:
    """Stand in for pretrained GPT2: a tiny GPT2 LM of the captions, saved to a local dir.

    ClipCap/clapcap steer a *pretrained*, frozen GPT2 that has learnt to read its context;
    a 2-layer GPT2 fitted to bare captions ignores any prefix. So this one is fitted to
    `<eos> <eos> <eos> TOPIC caption <eos>`, a context of the prefix's length whose last
    word tells the topic; the mapper, trained from scratch, must learn to produce such a
    context from the audio embedding alone.
    """
    from clap_lightning.encoders.tokenizer import CaptionTokenizer
    from clap_lightning.models.captioner import build_decoder

    tokenizer = CaptionTokenizer(tokenizer_dir, max_length=16, append_eos=True)
    torch.manual_seed(0)
    lm = build_decoder(CaptionerConfig(mapper=MapperConfig(n_embd=32), n_layer=2, n_head=4, n_positions=64,
                                       dropout=0.0), tokenizer)
    texts = [(topic, t) for topic, captions in zip(TOPICS, CLASS_CAPTIONS) for t in captions]
    topic_ids = torch.tensor(tokenizer.tokenizer([topic for topic, _ in texts])["input_ids"])  # one token each
    tokens = tokenizer([t for _, t in texts])
    eos = torch.full((len(texts), PREFIX - 1), tokenizer.tokenizer.eos_token_id)
    ids = torch.cat((eos, topic_ids, tokens["input_ids"]), dim=1)
    mask = torch.cat((torch.ones_like(eos), torch.ones_like(topic_ids), tokens["attention_mask"]), dim=1)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :PREFIX] = -100
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    for _ in range(150):
        loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.save_pretrained(str(out_dir))
    return str(out_dir)


def tiny_config(tokenizer_dir: str, tmp_path, caches: dict[str, str]) -> CaptioningConfig:
    mapper = MapperConfig(name="transformer", d_audio=D_AUDIO, n_embd=32, prefix_length=PREFIX, clip_length=4,
                          num_layers=2, num_heads=4)
    captioner = CaptionerConfig(mapper=mapper, tokenizer=tokenizer_dir, max_caption_tokens=16,
                                decoder_pretrained=pretrain_tiny_gpt2(tokenizer_dir, tmp_path / "gpt2"))
    trainer = TrainerConfig(accelerator="cpu", devices=1, max_steps=250, log_every_n_steps=50,
                            enable_progress_bar=False)
    return CaptioningConfig(name="tiny-cap", run_dir=str(tmp_path / "run"), clap_checkpoint="unused.ckpt",
                            captioner=captioner, trainer=trainer,
                            data=CaptionDataConfig(train=caches["train"], val=caches["val"], batch_size=16),
                            optim=OptimConfig(lr=1e-2, weight_decay=0.0, warmup_steps=20),
                            decoding=DecodingConfig(beam_size=3, max_length=10))


def mean_loss(module: CaptioningModule, config: CaptioningConfig) -> float:
    data = CaptionDataModule(config.data, module.captioner.tokenizer)
    data.setup("fit")
    module.eval()
    with torch.no_grad():
        losses = [module._loss(batch).item() for batch in data.val_dataloader()]
    return sum(losses) / len(losses)


def test_embedding_cache_round_trip_and_errors(tmp_path):
    path = tmp_path / "c" / "train.pt"
    assert write_embedding_cache(IdentityClap(), synthetic_clips("val", 1), path, "clap.ckpt", batch_size=5) == 16
    cache = read_embedding_cache(path)
    assert cache["audio_emb"].shape == (16, D_AUDIO) and cache["clap_checkpoint"] == "clap.ckpt"
    assert cache["captions"][0] == CLASS_CAPTIONS[0] and cache["keys"][-1] == "val-3-3"
    assert not list(path.parent.glob(".*tmp*"))  # the temporary file was renamed away
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a caption embedding cache"):
        read_embedding_cache(tmp_path / "other.pt")
    with pytest.raises(DataError, match="not found"):
        read_embedding_cache(tmp_path / "missing.pt")
    assert most_common_caption([["b", "a"], ["a"]]) == "a"


def test_training_the_mapper_beats_constant_caption(tokenizer_dir, tmp_path):
    caches = {}
    for split, seed in (("train", 1), ("val", 2)):
        caches[split] = str(tmp_path / f"{split}.pt")
        write_embedding_cache(IdentityClap(), synthetic_clips(split, seed), caches[split])
    config = tiny_config(tokenizer_dir, tmp_path, caches)
    torch.manual_seed(0)
    loss_before = mean_loss(CaptioningModule(config), config)

    start = time.monotonic()
    module = fit_captioning(config)
    seconds = time.monotonic() - start
    loss_after = mean_loss(module, config)
    decoder_state = {k: v.clone() for k, v in CaptioningModule(config).captioner.decoder.state_dict().items()}

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    captioner, stored = load_captioner(ckpt)
    assert stored.clap_checkpoint == "unused.ckpt"
    scores, captions = evaluate_captioning(captioner, caches["val"], config.decoding)
    val = read_embedding_cache(caches["val"])
    baseline = most_common_caption(read_embedding_cache(caches["train"])["captions"])
    baseline_scores = compute_caption_metrics([baseline] * len(captions), val["captions"])
    print(f"\ntrained {config.trainer.max_steps} steps in {seconds:.1f}s; val loss {loss_before:.3f} -> "
          f"{loss_after:.3f}; CIDEr-D {scores['CIDEr-D']:.3f} vs constant '{baseline}' "
          f"{baseline_scores['CIDEr-D']:.3f}; e.g. {captions[::4]}")
    assert loss_after < 0.5 * loss_before
    assert scores["CIDEr-D"] > baseline_scores["CIDEr-D"] + 1.0
    # The frozen decoder is untouched: only the mapper was trained.
    for name, value in captioner.decoder.state_dict().items():
        assert torch.equal(value, decoder_state[name]), name


def test_load_captioner_refuses_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="not a clap-lightning checkpoint"):
        load_captioner(tmp_path / "x.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {"name": "pretraining"}}}, tmp_path / "p.ckpt")
    with pytest.raises(CheckpointError, match="not a captioning checkpoint"):
        load_captioner(tmp_path / "p.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_captioner(tmp_path / "none.ckpt")


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.num_workers=-2", "data.num_workers must be >= 0"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1"),
    ("optim.lr=0", "optim.lr must be > 0"),
])
def test_captioning_config_refuses_out_of_range_numbers(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CaptioningConfig, None, (override,))


def test_captioning_trainer_takes_its_per_device_batch_from_its_own_data_section(tmp_path):
    """DeepSpeed states the micro-batch: a captioning run gives `data.batch_size` (it has no global batch)."""
    from clap_lightning.lit.run import build_trainer

    zero2 = Path(__file__).resolve().parents[2] / "configs" / "deepspeed" / "zero2.json"
    config = load_config(CaptioningConfig, None, ["trainer.accelerator=cpu", "trainer.strategy=deepspeed",
                                                  f"trainer.deepspeed_config={zero2}", "data.batch_size=12",
                                                  f"run_dir={tmp_path}"])
    trainer = build_trainer(config, config.data.batch_size)
    assert trainer.strategy.config["train_micro_batch_size_per_gpu"] == 12
    assert trainer.strategy.config["zero_optimization"]["stage"] == 2


def test_fit_prints_the_model_summary_without_a_flops_line(tmp_path, caplog):
    """Lightning's summary printed "0 Total Flops" in every fit (no example_input_array); ours leaves FLOPs out."""
    import logging

    import lightning as L
    from lightning.pytorch.callbacks import ModelSummary
    from lightning.pytorch.utilities.model_summary import summarize

    from clap_lightning.lit.run import ParameterSummary, build_trainer

    config = load_config(CaptioningConfig, None, ["trainer.accelerator=cpu", f"run_dir={tmp_path}"])
    trainer = build_trainer(config, config.data.batch_size)
    assert [type(c) for c in trainer.callbacks if isinstance(c, ModelSummary)] == [ParameterSummary]
    module = L.LightningModule()
    module.net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    summary = summarize(module)
    args = (summary._get_summary_data(), summary.total_parameters, summary.trainable_parameters, summary.model_size,
            summary.total_training_modes, summary.total_flops)
    with caplog.at_level(logging.INFO):
        ModelSummary.summarize(*args)
    assert "Total Flops" in caplog.text  # Lightning's own summary
    caplog.clear()
    with caplog.at_level(logging.INFO):
        ParameterSummary.summarize(*args)
    assert re.search(r"\n23 +Total params\n", caplog.text) and "Trainable params" in caplog.text
    assert "flops" not in caplog.text.lower()
