"""The paper's run as configs: clap2023 / clap2022 / htsat22 validate, are wired together, and the
rehearsal runs clap2023.yaml itself with size overrides only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clap_lightning.config import ExperimentConfig, load_config, pretraining_batch_size, read_overrides
from clap_lightning.data.sources import check_built_with_exclusion
from clap_lightning.errors import DataError
from clap_lightning.eval.tasks import resolve_tasks
from clap_lightning.lit.multitask_config import MultiTaskConfig
from clap_lightning.lit.strategies import read_deepspeed_config
from data_recipes import base

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
CLAP2023 = CONFIGS / "experiment" / "clap2023.yaml"
CLAP2022 = CONFIGS / "experiment" / "clap2022.yaml"
HTSAT22 = CONFIGS / "multitask" / "htsat22.yaml"
REHEARSAL = CONFIGS / "rehearsal"
# The paper's 20 pretraining sources, by recipe name.
PAPER_CORPORA = {"wavcaps", "audioset", "fsd50k", "clotho", "audiocaps", "macs", "wavtext5k", "sounddescs", "nsynth",
                 "fma", "cmu_mosi", "meld", "iemocap", "cmu_mosei", "msp_podcast", "cochlscene", "ljspeech",
                 "epic_sounds", "kinetics700", "findsounds"}
# What a rehearsal override may change: sizes, step counts, the CPU trainer, and the offline tokenizer.
SIZE_KEYS = re.compile(r"^(model\.(sample_rate|clip_seconds|d_proj|proj_dropout|audio_encoder\.\w+|text_encoder\.\w+)"
                       r"|trainer\.\w+|data\.(global_batch_size|num_workers|shuffle_buffer|epoch_samples|eval_batch_size)"
                       r"|optim\.warmup_steps|eval\.batch_size)$")


def shard_corpus(spec: str) -> str:
    parts = Path(spec).parts
    assert parts[:2] == ("data", "shards"), spec
    return parts[2]


def test_clap2023_has_the_paper_settings():
    config = load_config(ExperimentConfig, CLAP2023)
    model = config.model
    assert model.audio_encoder["name"] == "htsat" and model.text_encoder["name"] == "gpt2"
    assert (model.sample_rate, model.clip_seconds, model.d_proj) == (44100, 7.0, 1024)
    audio = model.audio_encoder
    assert (audio["n_fft"], audio["hop_length"], audio["n_mels"], audio["fmin"], audio["fmax"]) == (
        1024,
        320,
        64,
        50,
        8000,
    )
    assert config.data.global_batch_size == 1536
    assert config.trainer.precision == "bf16-mixed" and config.trainer.strategy == "ddp"
    assert pretraining_batch_size(config) == 192  # 1 node x 8 GPUs
    assert pretraining_batch_size(load_config(ExperimentConfig, CLAP2023, ["trainer.num_nodes=2"])) == 96
    assert config.optim.lr > 0 and 0 < config.optim.warmup_steps < config.trainer.max_steps


def test_clap2023_mixes_the_20_sources_by_pair_count_from_leakage_filtered_shards():
    data = load_config(ExperimentConfig, CLAP2023).data
    corpora = [shard_corpus(s.shards) for s in data.train_sources]
    assert sorted(corpora) == sorted(PAPER_CORPORA) and len(corpora) == 20
    assert PAPER_CORPORA <= set(base.recipe_names())  # each one is built by its recipe
    assert all(s.shards.endswith("/train") for s in data.train_sources)  # never a test split
    weights = {shard_corpus(s.shards): s.weight for s in data.train_sources}
    assert weights["audioset"] == 22176 + 2042985 and weights["clotho"] == 3839 * 5 and weights["nsynth"] == 289205
    assert sum(weights.values()) == 3869800
    assert data.exclude_list == "data/exclude/eval_test_ids.txt"
    held_out = {spec.rsplit("/", 2)[-2] + "/" + spec.rsplit("/", 1)[-1] for spec in data.test.split("::")}
    assert held_out == {"audiocaps/test", "clotho/test"}


def test_clap2023_eval_tasks_and_the_26_task_shard_root():
    config = load_config(ExperimentConfig, CLAP2023)
    assert [t.name for t in resolve_tasks(config.eval.tasks)] == ["esc50", "urbansound8k", "audiocaps_a2t",
                                                                  "audiocaps_t2a", "clotho_a2t", "clotho_t2a"]
    assert config.eval.data == "data/shards" and config.data.val  # the callback runs in validation
    listed = (CONFIGS / "data" / "clap2023.yaml").read_text()
    assert all(f" {spec.source}" in listed for spec in resolve_tasks("all"))  # every eval shard folder named


def test_clap2023_starts_from_the_htsat22_stage():
    stage1 = load_config(MultiTaskConfig, HTSAT22)
    stage2 = load_config(ExperimentConfig, CLAP2023)
    assert stage2.model.audio_encoder_init == f"{stage1.run_dir}/checkpoints/last.ckpt"
    assert stage1.model.audio_encoder == {**stage2.model.audio_encoder, "train_classifier_head": False}
    assert stage1.trainer.precision == "bf16-mixed"


def test_htsat22_reads_training_splits_of_the_pretraining_corpora():
    config = load_config(MultiTaskConfig, HTSAT22)
    assert len(config.tasks) == 22
    sources = {s.shards for s in load_config(ExperimentConfig, CLAP2023).data.train_sources}
    for task in config.tasks:
        assert task.shards in sources, task.name  # a recipe's output folder, built with the leakage list
        assert not task.val or shard_corpus(task.val) in PAPER_CORPORA and task.val.endswith("/valid")


def test_gpu_deepspeed_trainer_is_zero2():
    config = load_config(ExperimentConfig, CLAP2023, [f"trainer.{k}={v}" for k, v in
                                    (("strategy", "deepspeed"), ("deepspeed_config", "configs/deepspeed/zero2.json"))])
    from omegaconf import OmegaConf

    trainer = OmegaConf.load(CONFIGS / "trainer" / "gpu_deepspeed.yaml")
    assert trainer.strategy == "deepspeed" and trainer.precision == "bf16-mixed"
    config.trainer.deepspeed_config = str(REPO / trainer.deepspeed_config)
    ds = read_deepspeed_config(config.trainer, pretraining_batch_size(config))
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_micro_batch_size_per_gpu"] == 192


def test_clap2022_is_cnn14_bert_on_128k_pairs():
    config = load_config(ExperimentConfig, CLAP2022)
    assert config.model.audio_encoder["name"] == "cnn14" and config.model.text_encoder["name"] == "bert"
    assert config.model.clip_seconds == 5.0
    assert sum(s.weight for s in config.data.train_sources) == 128010
    assert {shard_corpus(p) for s in config.data.train_sources for p in s.shards.split("::")} == {
        "fsd50k", "clotho", "audiocaps", "macs"}


def test_rehearsal_overrides_change_sizes_only_and_build_the_model():
    from clap_lightning.lit.pretraining import ClapPretraining

    overrides = read_overrides(REHEARSAL / "model.txt") + read_overrides(REHEARSAL / "clap2023.txt")
    bad = [item for item in overrides if not SIZE_KEYS.match(item.split("=", 1)[0])]
    assert bad == []
    config = load_config(ExperimentConfig, CLAP2023, overrides)
    paper = load_config(ExperimentConfig, CLAP2023)
    # Everything else is the file users submit: sources, weights, leakage list, stage-1 init, schedule, tasks.
    assert config.data.train_sources == paper.data.train_sources and config.data.exclude_list == paper.data.exclude_list
    assert config.model.audio_encoder_init == paper.model.audio_encoder_init and config.optim.lr == paper.optim.lr
    assert config.eval.tasks == paper.eval.tasks and config.run_dir == paper.run_dir
    module = ClapPretraining(config)  # builds offline: tiny encoders, built-in tokenizer
    assert sum(p.numel() for p in module.parameters()) < 5_000_000
    stage1 = load_config(MultiTaskConfig, HTSAT22, read_overrides(REHEARSAL / "model.txt")
                                   + read_overrides(REHEARSAL / "htsat22.txt"))
    assert all(SIZE_KEYS.match(i.split("=", 1)[0]) for i in read_overrides(REHEARSAL / "htsat22.txt"))
    assert {**config.model.audio_encoder, "train_classifier_head": False} == stage1.model.audio_encoder


def _manifest(split_dir: Path, exclude: dict | None) -> Path:
    split_dir.mkdir(parents=True)
    (split_dir / "manifest.json").write_text(json.dumps({"build": {"exclude": exclude}, "shards": []}))
    return split_dir


def test_training_shards_must_be_built_with_the_configured_leakage_list(tmp_path):
    from clap_lightning.data.schema import exclude_digest

    ids = tmp_path / "ids.txt"
    ids.write_text("# AudioCaps test\nyoutube:abc\nfreesound:7\n")
    digest = exclude_digest(frozenset({"youtube:abc", "freesound:7"}))
    good = _manifest(tmp_path / "a" / "train", {"ids": 2, "sha1": digest})
    check_built_with_exclusion([str(good)], str(ids))
    unfiltered = _manifest(tmp_path / "b" / "train", None)
    with pytest.raises(DataError, match=r"b/train was built with no list, not data.exclude_list"):
        check_built_with_exclusion([f"{good}::{unfiltered}"], str(ids))
    other = _manifest(tmp_path / "c" / "train", {"ids": 1, "sha1": "0" * 40})
    with pytest.raises(DataError, match="another list"):
        check_built_with_exclusion([str(other)], str(ids))
    with pytest.raises(DataError, match="has no manifest.json"):
        check_built_with_exclusion([str(tmp_path / "x-{000000..000001}.tar")], str(ids))
    with pytest.raises(DataError, match="data.exclude_list: exclusion list .* not found"):
        check_built_with_exclusion([str(good)], str(tmp_path / "absent.txt"))


@pytest.mark.slow
def test_the_20_source_mix_draws_each_source_in_proportion_to_its_weight(tmp_path):
    """Count json `source` over the first 700 batches (192 a batch, the paper's per-GPU batch on 1 x 8) of the training
    stream the loader decodes from, with clap2023.yaml's weights and shuffle buffer: each within +-30% of its share."""
    import json as json_module
    from collections import Counter

    from clap_lightning.data.stream import FailureGuard, mixed_stream
    from tests.shard_factory import write_tar

    data = load_config(ExperimentConfig, CLAP2023).data
    batch, n_batches = pretraining_batch_size(load_config(ExperimentConfig, CLAP2023)), 700
    urls, weights = [], []
    for source in data.train_sources:
        name = shard_corpus(source.shards)
        members = [(f"{name}-{i}.json", json_module.dumps({"source": name, "id": str(i)}).encode()) for i in range(8)]
        urls.append([str(write_tar(tmp_path / f"{name}.tar", members))])
        weights.append(source.weight)
    counts: Counter = Counter()
    stream = mixed_stream(urls, weights, [data.seed, 0, 0, 0], data.shuffle_buffer, Counter(), FailureGuard("mix"))
    for position, raw in stream:
        counts[json_module.loads(raw["json"])["source"]] += 1
        if position + 1 == batch * n_batches:
            break
    total = batch * n_batches
    for source, weight in zip(data.train_sources, weights):
        expected = total * weight / sum(weights)
        name = shard_corpus(source.shards)
        assert abs(counts[name] - expected) <= 0.3 * expected, (name, counts[name], round(expected, 1))
    assert min(total * w / sum(weights) for w in weights) > 50  # even CMU-MOSI (0.06%) is counted, not guessed
