import io

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from clap_lightning.audio.io import DirectResamplePlan, ResamplePlan, Resampler, fit_length, read_clip


def flac_bytes(audio: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def test_read_clip_seeks_to_a_random_crop_and_downmixes():
    ramp = (np.arange(16000) % 1000 / 1000.0 - 0.5).astype(np.float32)
    stereo = np.stack([ramp, ramp * 0.5], axis=1)
    data = flac_bytes(stereo, 16000)
    audio, rate, total = read_clip(data, 4000, np.random.default_rng(0))
    assert rate == 16000 and total == 16000 and audio.shape == (4000,)
    start = int(np.random.default_rng(0).integers(0, 16000 - 4000 + 1))
    np.testing.assert_allclose(audio, 0.75 * ramp[start:start + 4000], atol=1e-4)  # mean of the channels
    head, _, _ = read_clip(data, 4000, None)  # no rng: deterministic crop from the start
    np.testing.assert_allclose(head, 0.75 * ramp[:4000], atol=1e-4)


@pytest.mark.parametrize("mode, expected, length", [
    ("repeat", [1, 2, 3, 1, 2, 3, 1], 7),  # the tiled copies are audio, not padding
    ("zero", [1, 2, 3, 0, 0, 0, 0], 3),
])
def test_fit_length_pads_short_clips(mode, expected, length):
    clip, real = fit_length(torch.tensor([1.0, 2.0, 3.0]), 7, mode)
    assert clip.tolist() == expected and real == length
    cropped, real = fit_length(torch.arange(10.0), 4, mode)
    assert cropped.tolist() == [0, 1, 2, 3] and real == 4


def test_resampler_builds_each_kernel_once_and_passes_matching_rates():
    resample = Resampler(16000)
    tone = torch.sin(torch.arange(48000) / 48000 * 2 * torch.pi * 440)
    out = resample(tone, 48000)
    assert out.shape == (16000,) and len(resample._kernels) == 1
    plan = next(iter(resample._kernels.values()))
    resample(tone, 48000)
    assert len(resample._kernels) == 1 and next(iter(resample._kernels.values())) is plan
    same = torch.randn(100)
    assert resample(same, 16000) is same


@pytest.mark.parametrize("orig,new,plan", [
    (48000, 44100, ResamplePlan), (44100, 16000, ResamplePlan), (16000, 44100, ResamplePlan),
    (22050, 32000, ResamplePlan), (8000, 16000, ResamplePlan), (48000, 32000, ResamplePlan),
    (48000, 16000, ResamplePlan),
    (1601, 4410, DirectResamplePlan), (4801, 4410, DirectResamplePlan), (16001, 3000, DirectResamplePlan),
])
def test_resampler_matches_torchaudio(orig, new, plan):
    """Both plans give torchaudio's values (whose dense kernel the direct plan's rates would make large)."""
    audio = torch.randn(2, 3001, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = torchaudio.functional.resample(audio, orig, new)  # float64 input: float64 kernel
    resample = Resampler(new)
    atol = 1e-12 if plan is ResamplePlan else 1e-11  # taps at positions rounded another way
    torch.testing.assert_close(resample(audio, orig), reference, atol=atol, rtol=0)
    torch.testing.assert_close(resample(audio.float(), orig), reference.float(), atol=2e-6, rtol=0)
    assert {type(p) for p in resample._kernels.values()} == {plan}


def test_odd_rates_stay_within_the_filters_passband_error():
    """16001 and 48001 Hz do not reduce against 44.1 kHz (the dense kernel would hold 16001 x 44100
    taps); the direct plan's 1 kHz tone is as close to the ideal one as at 16000 / 48000 Hz."""
    def error(orig: int, new: int = 44100) -> float:
        wave = torch.sin(2 * torch.pi * 1000 * torch.arange(3 * orig, dtype=torch.float64) / orig)
        out = Resampler(new)(wave.float(), orig).double()
        ideal = torch.sin(2 * torch.pi * 1000 * torch.arange(len(out), dtype=torch.float64) / new)
        assert len(out) == -(-3 * orig * new // orig)
        return float((out - ideal)[new // 10:-new // 10].abs().max())  # away from the zero-padded ends

    for odd, ordinary in ((16001, 16000), (48001, 48000)):
        assert error(odd) < 1e-3 and error(odd) < error(ordinary) + 1e-4


def test_resample_plan_splits_the_banded_kernel():
    from clap_lightning.audio.io import ResamplePlan

    plan = ResamplePlan(48000, 44100, torch.float32)
    assert len(plan.groups) > 1  # each phase touches ~14 of the block's 174 samples
    assert plan.groups[0][0] == 0 and plan.groups[-1][1] == plan.new
    assert all(a[1] == b[0] for a, b in zip(plan.groups, plan.groups[1:]))


@pytest.mark.parametrize("channels, file_rate", [(1, 48000), (2, 48000), (1, 48001)])
def test_decoding_between_the_resampler_margins_changes_nothing(channels, file_rate):
    """read_clip(margins=resampler.margins) + resampler(padded=True) == read_clip + resampler."""
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal((48000, channels))).astype(np.float32)
    data = flac_bytes(audio if channels > 1 else audio[:, 0], file_rate)
    resample = Resampler(44100)
    left, right = resample.margins(file_rate)
    assert left > 0 and right >= left and resample.margins(44100) == (0, 0)
    plain, rate, _ = read_clip(data, 30000, np.random.default_rng(5))
    padded, rate_again, _ = read_clip(data, 30000, np.random.default_rng(5), resample.margins)
    assert rate == rate_again == file_rate and padded.shape == (left + 30000 + right,)
    assert not padded[:left].any() and not padded[-right:].any()
    np.testing.assert_array_equal(padded[left:-right], plain)
    torch.testing.assert_close(resample(torch.from_numpy(padded), rate, padded=True),
                               resample(torch.from_numpy(plain), rate), atol=0, rtol=0)


@pytest.mark.parametrize("orig", [48000, 44100, 16000, 16001])
def test_resampling_into_out_writes_the_leading_samples_in_place(orig):
    """out= (a batch row) receives the first len(out) samples of the resampled clip, untouched beyond."""
    resample = Resampler(44100)
    audio = torch.randn(orig, generator=torch.Generator().manual_seed(0))
    expected = resample(audio, orig)
    row = torch.full((3, 30001), 7.0)  # 30001: not a whole number of output blocks at 48 -> 44.1 kHz
    got = resample(audio, orig, out=row[1])
    assert got.data_ptr() == row[1].data_ptr()
    torch.testing.assert_close(row[1], expected[:30001], atol=1e-6, rtol=0)  # the tail block: another BLAS path
    assert (row[0] == 7).all() and (row[2] == 7).all()
    with pytest.raises(ValueError, match="out="):
        resample(audio, orig, out=torch.empty(expected.shape[0] + 1))
    with pytest.raises(ValueError, match="out="):
        resample(audio[None], orig, out=torch.empty(100))


def test_repeatpad_gives_whole_copies_then_zeros_as_laion():
    clip, length = fit_length(torch.arange(1.0, 4.0), 10, "repeatpad")  # 3 samples into 10
    assert clip.tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3, 0] and length == 10
    assert fit_length(torch.arange(1.0, 4.0), 10, "repeat")[0].tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
