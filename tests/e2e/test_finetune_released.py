"""Fine-tune from released weights: a LAION-format file -> convert -> fit with model.init_from ->
export hf -> ClapModel."""

from __future__ import annotations

import torch
from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

from clap_lightning.cli import main
from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.lit.run import run_stage
from clap_lightning.models.clap import CLAP
from tests.e2e.conftest import REPO, demo_overrides
from tests.unit.test_convert_hf import laion_checkpoint


def test_laion_weights_finetune_on_shards_and_export_to_clapmodel(demo_shards, tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    audio = ClapAudioConfig(window_size=4, num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=[4, 4],
                            depths=[2, 2], num_attention_heads=[2, 4], patch_embeds_hidden_size=16, hidden_size=32,
                            projection_dim=24, num_classes=10)
    text = ClapTextConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=48, max_position_embeddings=80, projection_dim=24)
    torch.manual_seed(0)
    released = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=24))
    with torch.no_grad():
        released.logit_scale_t.fill_(2.5)
    extra = {"tscam_conv.weight": (10, 32, 2, 3), "tscam_conv.bias": (10,), "head.weight": (10, 10),
             "head.bias": (10,)}
    laion = laion_checkpoint(released, extra, tmp_path / "630k-small.pt")
    converted = tmp_path / "laion.ckpt"
    assert main(["convert", "laion", str(laion), "--out", str(converted), "--tokenizer", tokenizer_dir,
                 "--text-heads", "2"]) == 0

    configs = tmp_path / "configs"  # the repo's groups beside an experiment with no model group
    (configs / "experiment").mkdir(parents=True)
    for group in ("data", "trainer"):
        (configs / group).symlink_to(REPO / "configs" / group)
    experiment = configs / "experiment" / "finetune.yaml"  # the architecture comes from init_from
    experiment.write_text("defaults: {data: demo, trainer: cpu}\nname: finetune\n")
    run_dir = tmp_path / "run"
    overrides = demo_overrides(demo_shards, run_dir, steps=3) + [f"model.init_from={converted}",
                                                                 "model.clip_seconds=2.5"]
    config = load_config(ExperimentConfig, experiment, overrides)
    assert config.model.projection == "mlp" and config.model.audio_encoder["sample_rate"] == 48000
    run_stage("fit", config, None)
    tuned = CLAP.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert tuned.logit_scale_t.item() == 2.5  # came from the released weights (it is not trained)
    start = CLAP.from_checkpoint(converted)
    moved = (tuned.audio_projection.linear1.weight - start.audio_projection.linear1.weight).abs().max()
    assert 0 < moved < 0.1  # fine-tuned from there, not from scratch

    out = tmp_path / "hf"
    assert main(["export", "hf", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    reloaded = ClapModel.from_pretrained(out).eval()
    mel = -40 + 15 * torch.randn(2, 1, 251, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = reloaded.get_audio_features(input_features=mel).pooler_output
        ours = torch.nn.functional.normalize(tuned.encode_audio_features(mel[:, 0]), dim=-1)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
