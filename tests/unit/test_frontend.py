"""Log-mel front end: Slaney mel filters, dB, STFT framing, SpecAugment; checked by hand."""

import math

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from clap_lightning.audio.frontend import (
    LogMelFrontEnd,
    SpecAugment,
    SpecAugmentConfig,
    compute_mel_filters,
    hz_to_mel,
    mel_to_hz,
    power_to_db,
)

torch.set_num_threads(1)


def slaney_mel(hz: float) -> float:
    # Slaney's scale written out: 3 mel per 200 Hz up to 1 kHz, then 27 mel per factor 6.4.
    return 3.0 * hz / 200.0 if hz < 1000 else 15.0 + 27.0 * math.log(hz / 1000.0) / math.log(6.4)


def slaney_hz(mel: float) -> float:
    return 200.0 * mel / 3.0 if mel < 15 else 1000.0 * 6.4 ** ((mel - 15.0) / 27.0)


def triangle(freq: float, lo: float, mid: float, hi: float) -> float:
    # One Slaney-normalised filter: peak 2 / (hi - lo), so its area in Hz is 1.
    if lo <= freq <= mid:
        up = (freq - lo) / (mid - lo)
    elif mid < freq <= hi:
        up = (hi - freq) / (hi - mid)
    else:
        up = 0.0
    return up * 2.0 / (hi - lo)


def test_slaney_scale_anchor_points():
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(6400.0) == pytest.approx(42.0)  # one factor of 6.4 above 1 kHz
    assert hz_to_mel(200.0) == pytest.approx(3.0)
    freqs = np.array([0.0, 50.0, 999.0, 1000.0, 4321.0, 14000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs)), freqs, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(
    "sample_rate,n_fft,n_mels,fmin,fmax", [(16000, 512, 10, 0.0, 8000.0), (32000, 1024, 64, 50.0, 14000.0)]
)
def test_mel_filters_match_closed_form(sample_rate, n_fft, n_mels, fmin, fmax):
    filters = compute_mel_filters(sample_rate, n_fft, n_mels, fmin, fmax)
    assert filters.shape == (n_fft // 2 + 1, n_mels) and filters.dtype == torch.float32
    lo_mel, hi_mel = slaney_mel(fmin), slaney_mel(fmax)
    edges = [slaney_hz(lo_mel + i * (hi_mel - lo_mel) / (n_mels + 1)) for i in range(n_mels + 2)]
    bin_hz = sample_rate / n_fft
    for band in (0, n_mels // 2, n_mels - 1):
        expected = [triangle(k * bin_hz, *edges[band:band + 3]) for k in range(n_fft // 2 + 1)]
        np.testing.assert_allclose(filters[:, band].numpy(), expected, rtol=1e-5, atol=1e-9)
    # Nothing above fmax or below fmin.
    freqs = torch.arange(n_fft // 2 + 1) * bin_hz
    assert torch.all(filters[(freqs > fmax) | (freqs < fmin)] == 0)


def test_mel_filters_match_torchaudio_slaney():
    ours = compute_mel_filters(32000, 1024, 64, 50.0, 14000.0)
    theirs = AF.melscale_fbanks(513, 50.0, 14000.0, 64, 32000, norm="slaney", mel_scale="slaney")
    assert (ours - theirs).abs().max() < 1e-6


def test_power_to_db_by_hand():
    power = torch.tensor([1.0, 100.0, 0.5, 1e-12, 0.0])
    expected = torch.tensor([0.0, 20.0, 10 * math.log10(0.5), -100.0, -100.0])  # clamped at amin=1e-10
    torch.testing.assert_close(power_to_db(power), expected)


def test_frame_count_and_power_of_one_frame():
    n_fft, hop = 64, 16
    front = LogMelFrontEnd(n_fft, hop, n_mels=8, fmin=0.0, fmax=4000.0, mel_sample_rate=8000)
    for length in (100, 128, 257):
        assert front(torch.randn(2, length)).shape == (2, 1 + length // hop, 8)
    wave = torch.randn(1, 200, dtype=torch.float64)
    # Frame j: samples [j*hop - n_fft/2, j*hop + n_fft/2) of the reflect-padded wave, periodic Hann.
    padded = np.pad(wave[0].numpy(), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frame = 3
    power = np.abs(np.fft.rfft(padded[frame * hop:frame * hop + n_fft] * window)) ** 2
    mel = power @ front.mel_filters.double().numpy()
    expected = 10 * np.log10(np.maximum(mel, 1e-10))
    np.testing.assert_allclose(front(wave)[0, frame].numpy(), expected, rtol=1e-4, atol=1e-3)


def test_mel_sample_rate_moves_bands():
    # msclap 2023: 44.1 kHz audio through filters built for 32 kHz, so a tone at f Hz lands in
    # the band the filters place at f * 32000 / 44100.
    sr, tone = 44100, 4410.0
    wave = torch.sin(2 * math.pi * tone * torch.arange(sr) / sr)[None]
    quirk = LogMelFrontEnd(1024, 320, 64, 50.0, 14000.0, mel_sample_rate=32000)
    plain = LogMelFrontEnd(1024, 320, 64, 50.0, 14000.0, mel_sample_rate=sr)
    centres = mel_to_hz(np.linspace(hz_to_mel(50.0), hz_to_mel(14000.0), 66))[1:-1]
    for front, apparent in ((quirk, tone * 32000 / sr), (plain, tone)):
        peak = int(front(wave)[0].mean(0).argmax())
        assert abs(peak - int(np.abs(centres - apparent).argmin())) <= 1


def test_spec_augment_only_in_training():
    aug = SpecAugment(SpecAugmentConfig(), frames=1024)  # HTSAT's 1024-frame image: 64 frames, 8 bins
    assert aug.drop_widths(300, 64) == (64, 8)
    feats = torch.randn(16, 300, 64) + 10.0  # no zeros of its own
    aug.eval()
    assert torch.equal(aug(feats), feats)
    aug.train()
    torch.manual_seed(0)
    out = aug(feats)
    assert torch.all(feats != 0)  # input untouched
    dropped = out == 0
    assert dropped.any()
    time_dropped = dropped.all(dim=2).sum(dim=1)  # whole frames zeroed, per clip
    freq_dropped = dropped.all(dim=1).sum(dim=1)  # whole mel bins zeroed, per clip
    assert time_dropped.max() <= 2 * 63 and freq_dropped.max() <= 2 * 7
    # Every zero belongs to a dropped frame or a dropped bin; everything else is kept.
    stripe = dropped.all(dim=2, keepdim=True) | dropped.all(dim=1, keepdim=True)
    assert torch.equal(dropped, stripe)
    torch.testing.assert_close(out[~dropped], feats[~dropped])


def test_spec_augment_widths_are_fractions_of_the_spectrogram():
    cfg = SpecAugmentConfig(time_width=0.25, time_stripes=1, freq_width=0.5, freq_stripes=0)
    assert SpecAugment(cfg).drop_widths(200, 32) == (50, 16)  # of each input's frames
    assert SpecAugment(cfg, frames=256).drop_widths(200, 32) == (64, 16)  # of a fixed frame count
    assert SpecAugment(SpecAugmentConfig(time_width=0.0)).drop_widths(200, 32)[0] == 1  # width U{0}: never drops
    aug = SpecAugment(cfg).train()
    torch.manual_seed(1)
    dropped = aug(torch.randn(64, 200, 32) + 10.0) == 0
    assert not dropped.all(dim=1).any()  # no frequency stripes
    widths = dropped.all(dim=2).sum(dim=1)  # one time stripe per clip, 0-49 frames wide
    assert widths.max() <= 49 and widths.max() >= 30
    with pytest.raises(ValueError, match=r"spec_augment.time_width: expected a fraction in \[0, 1\]; got 64"):
        SpecAugmentConfig(time_width=64)


def test_bn0_gradients_match_float64_whatever_layout_the_gradient_arrives_in():
    # The gradient reaches bn0 laid out [B, n_mels, frames] (as from HTSAT's image); torch 2.11's CPU
    # BatchNorm2d backward on msclap's [B, n_mels, frames, 1] view got bn0's weight and bias gradients wrong.
    from clap_lightning.audio.frontend import SpecAugment, normalise_and_augment

    torch.manual_seed(0)
    feats = torch.randn(4, 256, 64) * 20 - 50
    downstream = torch.randn(4, 64, 256)
    bn = torch.nn.BatchNorm2d(64)
    bn.weight.data.uniform_(0.5, 1.5)
    out = normalise_and_augment(feats, bn, SpecAugment(), use_spec_augment=False)
    (out.transpose(1, 2) * downstream).sum().backward()
    x = feats.double()
    normed = (x - x.mean((0, 1))) / (x.var((0, 1), unbiased=False) + bn.eps).sqrt()
    torch.testing.assert_close(out.double(), normed * bn.weight.double() + bn.bias.double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bn.bias.grad.double(), downstream.double().sum((0, 2)), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(bn.weight.grad.double(), (normed.transpose(1, 2) * downstream.double()).sum((0, 2)),
                               rtol=1e-5, atol=1e-3)
    # the running statistics move as nn.BatchNorm2d's do (unbiased variance, momentum 0.1)
    torch.testing.assert_close(bn.running_mean, 0.1 * feats.mean((0, 1)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * feats.var((0, 1)), rtol=1e-4, atol=1e-3)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()  # eval: the running statistics apply
    torch.testing.assert_close(normalise_and_augment(feats, bn, SpecAugment(), False),
                               (feats - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias)


def test_htk_front_end_is_torchaudios_mel_spectrogram_in_db():
    """LAION-CLAP's fusion input (training/data.py `get_mel`): torchaudio's MelSpectrogram, HTK, no norm."""
    import torchaudio

    wave = 0.3 * torch.randn(2, 48000, generator=torch.Generator().manual_seed(0))
    ours = LogMelFrontEnd(1024, 480, 64, 50.0, 14000.0, 48000, mel_scale="htk")(wave)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=48000, n_fft=1024, win_length=1024, hop_length=480,
                                               center=True, pad_mode="reflect", power=2.0, norm=None, n_mels=64,
                                               f_min=50, f_max=14000)(wave)
    theirs = torchaudio.transforms.AmplitudeToDB(top_db=None)(mel).transpose(1, 2)
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)  # dB
    slaney = LogMelFrontEnd(1024, 480, 64, 50.0, 14000.0, 48000)(wave)
    assert (slaney - theirs).abs().mean() > 1.0  # the scales differ by far more than the tolerance


def test_int16_rounding_is_laions_float32_to_int16_round_trip():
    wave = torch.tensor([[0.5, -0.25, 1.5, -2.0, 1e-5, 0.123456789] + [0.0] * 2042])
    laion = (np.clip(wave.numpy(), -1.0, 1.0) * 32767.0).astype(np.int16) / 32767.0  # LAION: x -> int16 -> x
    frontend = LogMelFrontEnd(1024, 480, 64, 50.0, 14000.0, 48000, quantize_int16=True)
    seen = []
    original_stft = torch.stft
    try:
        torch.stft = lambda x, *a, **k: (seen.append(x.clone()), original_stft(x, *a, **k))[1]
        frontend(wave)
    finally:
        torch.stft = original_stft
    torch.testing.assert_close(seen[0], torch.from_numpy(laion.astype(np.float32)), atol=0, rtol=0)
    assert not torch.equal(seen[0], wave)


def test_front_end_switches_count_as_differences_and_old_manifests_mean_the_defaults():
    from clap_lightning.audio.frontend import frontend_differences, frontend_params

    slaney = frontend_params({"sample_rate": 48000, "n_fft": 1024, "hop_length": 480, "n_mels": 64, "fmin": 50,
                              "fmax": 14000, "mel_sample_rate": 48000})
    htk = {**slaney, "mel_scale": "htk", "quantize_int16": True}
    old_manifest = {k: v for k, v in slaney.items() if k not in ("mel_scale", "quantize_int16")}
    assert frontend_differences(old_manifest, slaney) == []
    assert frontend_differences(old_manifest, htk) == ["mel_scale 'slaney' (model: 'htk')",
                                                       "quantize_int16 False (model: True)"]
