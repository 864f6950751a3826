"""Padding masks: with `mask_padding`, zero padding stays out of bn0's statistics and the pooled embedding."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from clap_lightning.audio.frontend import compute_valid_frames, masked_batch_norm
from clap_lightning.config import ExperimentConfig, config_from
from clap_lightning.encoders.registry import build_audio_encoder
from clap_lightning.models.clap import CLAP

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"
RATE = 16000
# The tiny model with 7-s clips: a hop of 512 keeps 7 s (219 frames) inside its 256-frame image.
SEVEN_SECONDS = {"n_fft": 1024, "hop_length": 512}


def _model(mask_padding: bool = True, clip_seconds: float = 7.0) -> CLAP:
    torch.manual_seed(0)
    section = OmegaConf.to_container(OmegaConf.load(TINY))
    section["clip_seconds"] = clip_seconds
    section["audio_encoder"].update(SEVEN_SECONDS, mask_padding=mask_padding)
    return CLAP(config_from(ExperimentConfig, {"model": section}).model).eval()


def _tiny_encoder(mask_padding: bool):
    options = OmegaConf.to_container(OmegaConf.load(TINY))["audio_encoder"]
    return build_audio_encoder(options.pop("name"), {**options, "mask_padding": mask_padding})


def _sound(seconds: float = 0.5) -> torch.Tensor:
    """A decaying two-partial tone over faint noise: no sample is exactly zero."""
    t = torch.arange(int(RATE * seconds)) / RATE
    gen = torch.Generator().manual_seed(1)
    tone = torch.sin(2 * torch.pi * 440 * t) + 0.5 * torch.sin(2 * torch.pi * 1250 * t)
    return 0.4 * tone * torch.exp(-3 * t) + 0.01 * torch.randn(t.shape, generator=gen) + 1e-3


def _padded(sound: torch.Tensor, seconds: float) -> torch.Tensor:
    return F.pad(sound, (0, int(RATE * seconds) - len(sound)))


def test_valid_frames_follow_frame_centres_and_a_full_clip_is_all_real():
    valid = compute_valid_frames(torch.tensor([16, 5, 4, 0]), frames=5, hop_length=4, samples=16)
    assert valid.tolist() == [[True] * 5,  # fills the window: the frame centred on its end counts
                              [True, True, False, False, False],  # centres 0 and 4 lie before sample 5
                              [True, False, False, False, False],
                              [True, False, False, False, False]]  # an empty clip keeps one frame


def test_masked_bn0_statistics_equal_the_statistics_of_the_unpadded_frames():
    torch.manual_seed(0)
    feats = 20 * torch.randn(3, 50, 8) - 40  # [B, frames, mel] in dB
    valid = torch.arange(50)[None, :] < torch.tensor([50, 20, 7])[:, None]
    feats[~valid] = -100.0  # the dB floor of zero padding
    masked, reference = torch.nn.BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        for bn in (masked, reference):
            bn.weight.copy_(torch.linspace(0.5, 2.0, 8))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, 8))

    def unpadded(bn):  # BatchNorm2d over the real frames alone, laid out [1, mel, N, 1]
        return bn(feats[valid].T[None, :, :, None])[0, :, :, 0].T

    out = masked_batch_norm(feats, valid, masked)
    torch.testing.assert_close(out[valid], unpadded(reference))
    torch.testing.assert_close(masked.running_mean, reference.running_mean)
    torch.testing.assert_close(masked.running_var, reference.running_var)  # unbiased, as BatchNorm keeps it
    assert masked.num_batches_tracked.item() == 1
    torch.testing.assert_close(out[~valid], masked.bias.detach().expand(int((~valid).sum()), 8))  # neutral
    masked.eval(), reference.eval()
    torch.testing.assert_close(masked_batch_norm(feats, valid, masked)[valid], unpadded(reference))


@pytest.mark.parametrize("mask_padding", [True, False])
def test_htsat_bn0_running_statistics_come_from_the_real_frames_only(mask_padding):
    torch.manual_seed(0)
    encoder = _tiny_encoder(mask_padding).train()
    samples = 32640  # the tiny model's clip
    lengths = torch.tensor([samples, 12000, 5000, 800])
    wave = 0.1 * torch.randn(4, samples) * (torch.arange(samples)[None, :] < lengths[:, None])
    encoder(wave, lengths)
    feats = encoder.frontend(wave)
    real = feats[compute_valid_frames(lengths, feats.shape[1], encoder.cfg.hop_length, samples)]  # [N, mel]
    reference = torch.nn.BatchNorm2d(feats.shape[2]).train()
    reference(real.T[None, :, :, None])
    matches = torch.allclose(encoder.bn0.running_mean, reference.running_mean, atol=1e-4, rtol=1e-5)
    assert matches == mask_padding  # without the mask, padding frames at -100 dB pull the mean down


def _square(seconds: float = 0.5) -> torch.Tensor:
    """Another sound: a 180-Hz square wave."""
    t = torch.arange(int(RATE * seconds)) / RATE
    return 0.3 * torch.sign(torch.sin(2 * torch.pi * 180 * t)) + 1e-3


def _silence_and_sound_distances(model: CLAP) -> tuple[float, float]:
    """(distance between one 0.5-s sound padded to 2 s and to 7 s, distance between two sounds padded to 2 s)."""
    sound = _sound(0.5)
    emb = model.embed_audio([_padded(sound, 2.0), _padded(sound, 7.0), _padded(_square(0.5), 2.0)])
    return (emb[0] - emb[1]).norm().item(), (emb[0] - emb[2]).norm().item()


def test_a_short_sound_embeds_the_same_whatever_silence_follows_it():
    model = _model(mask_padding=True)
    sound = _sound(0.5)
    waves = [_padded(sound, 2.0), _padded(sound, 7.0)]
    emb = model.embed_audio(waves)  # trailing digital silence is padding
    assert F.cosine_similarity(emb[0], emb[1], dim=0) >= 0.99
    silence, sounds = _silence_and_sound_distances(model)
    assert silence <= 0.05 * sounds  # random weights make every cosine high: compare with another sound
    # The encoder given the lengths: a 2-s and a 7-s input, the same 0.5 s of sound in each.
    length = torch.tensor([len(sound)])
    with torch.no_grad():
        short, long = (model.encode_audio(w[None], length) for w in waves)
    assert F.cosine_similarity(short, long).item() >= 0.99
    torch.testing.assert_close(F.normalize(long, dim=-1), emb[1:], atol=1e-5, rtol=1e-4)  # the same path


def test_without_the_mask_the_embedding_depends_on_the_silence():
    """The control: as released (repeat padding, nothing masked), appended silence moves the embedding
    about as far as changing the sound does."""
    silence, sounds = _silence_and_sound_distances(_model(mask_padding=False))
    assert silence > 0.5 * sounds


def test_a_full_batch_is_unchanged_by_the_mask():
    """Clips that fill the window have no padding: masked and plain encoders agree, in training too."""
    torch.manual_seed(0)
    plain, masked = _tiny_encoder(False).train(), _tiny_encoder(True).train()
    masked.load_state_dict(plain.state_dict())
    wave = 0.1 * torch.randn(3, 32640)
    torch.testing.assert_close(masked(wave, torch.full((3,), 32640)), plain(wave))
    torch.testing.assert_close(masked(wave), plain(wave))


def test_cnn14_pools_only_the_real_columns():
    torch.manual_seed(0)
    encoder = build_audio_encoder("cnn14", {"sample_rate": RATE, "mel_sample_rate": RATE, "n_fft": 512,
                                             "hop_length": 256, "n_mels": 32, "fmax": 8000.0, "out_dim": 64,
                                             "num_classes": 4, "mask_padding": True}).eval()
    sound = _sound(0.7)
    length = torch.tensor([len(sound)])
    with torch.no_grad():
        short, long = (encoder(_padded(sound, s)[None], length) for s in (2.0, 7.0))
        unmasked = [encoder(_padded(sound, s)[None]) for s in (2.0, 7.0)]
    assert F.cosine_similarity(short, long).item() >= 0.99
    assert F.cosine_similarity(*unmasked).item() < F.cosine_similarity(short, long).item()


def test_a_batch_cut_to_its_longest_clip_encodes_as_the_zero_padded_one():
    """data.pad_mode none: HTSAT pads the shorter spectrogram through the mask instead of stretching it."""
    torch.manual_seed(0)
    encoder = _tiny_encoder(True)
    lengths = torch.tensor([9000, 4000, 12000])
    full = 0.1 * torch.randn(3, 32640) * (torch.arange(32640)[None, :] < lengths[:, None])
    cut = full[:, :12000]
    for is_train in (False, True):
        zero, none = _tiny_encoder(True).train(is_train), _tiny_encoder(True).train(is_train)
        zero.load_state_dict(encoder.state_dict()), none.load_state_dict(encoder.state_dict())
        cut_emb, full_emb = none(cut, lengths), zero(full, lengths)
        # The longest clip's last frame differs (the STFT reflects its end when it ends the batch), and in
        # training that frame enters bn0's statistics for every row; the shorter clips are otherwise exact.
        assert F.cosine_similarity(cut_emb, full_emb).min() >= 0.998
        if not is_train:
            torch.testing.assert_close(cut_emb[:2], full_emb[:2], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(none.bn0.running_mean, zero.bn0.running_mean, atol=0.02, rtol=1e-3)


def test_pad_mode_none_needs_the_mask():
    from clap_lightning.config import ExperimentConfig, load_config
    from clap_lightning.errors import ConfigError

    demo = TINY.parents[1] / "experiment" / "demo.yaml"
    assert load_config(ExperimentConfig, demo, ["data.pad_mode=none"]).data.pad_mode == "none"
    with pytest.raises(ConfigError, match="mask_padding"):
        load_config(ExperimentConfig, demo, ["data.pad_mode=none", "model.audio_encoder.mask_padding=false"])
    with pytest.raises(ConfigError, match="data.pad_mode must be one of repeat, zero, none"):
        load_config(ExperimentConfig, demo, ["data.pad_mode=tile"])


def test_fine_tuning_and_multi_task_heads_see_the_masked_embedding():
    from clap_lightning.lit.finetune import AudioClassifier
    from clap_lightning.models.multitask import HeadSpec, MultiTaskClassifier

    torch.manual_seed(0)
    classifier = AudioClassifier(_tiny_encoder(True), num_classes=3).eval()
    options = OmegaConf.to_container(OmegaConf.load(TINY))["audio_encoder"]
    multitask = MultiTaskClassifier({**options, "mask_padding": True}, [HeadSpec("c", "single", 3)]).eval()
    clip_samples = int(RATE * 2.04)
    sound = _sound(0.5)
    audio = torch.stack([_padded(sound, 2.04)[:clip_samples], _sound(2.04)[:clip_samples]])
    lengths = torch.tensor([len(sound), clip_samples])
    with torch.no_grad():
        masked = classifier.head(classifier.audio_encoder(audio, lengths))
        assert torch.equal(classifier(audio, lengths), masked)
        assert not torch.allclose(classifier(audio), masked)  # without lengths the padding is seen
        expected = multitask.heads["c"](multitask.audio_encoder(audio, lengths))
        assert torch.equal(multitask(audio, lengths)["c"], expected)
