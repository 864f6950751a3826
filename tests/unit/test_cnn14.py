"""CNN14 encoder: shapes, msclap key layout, registry."""

import pytest
import torch

from clap_lightning.encoders.cnn14 import CNN14Config, CNN14Encoder
from clap_lightning.encoders.registry import AUDIO_ENCODERS

torch.set_num_threads(1)


def test_shapes_and_registry():
    torch.manual_seed(0)
    model = AUDIO_ENCODERS.build("cnn14", {"sample_rate": 16000, "mel_sample_rate": 16000, "n_fft": 512,
                                           "hop_length": 256, "fmax": 8000.0, "out_dim": 256, "num_classes": 10})
    assert isinstance(model, CNN14Encoder) and model.out_dim == 256
    wave = torch.randn(2, 16000)  # 63 frames
    assert model.train()(wave).shape == (2, 256)
    model.eval()
    with torch.no_grad():
        out = model.forward_features(wave)
        torch.testing.assert_close(out["embedding"], model(wave))
        torch.testing.assert_close(model(wave[1:]), out["embedding"][1:], atol=1e-5, rtol=1e-5)
    assert out["clipwise_output"].shape == (2, 10)
    assert (out["embedding"] >= 0).all()  # ReLU output, no dropout in eval
    assert not any(p.requires_grad for p in model.fc_audioset.parameters())


def test_default_is_msclap_2022_layout():
    state = CNN14Encoder(CNN14Config()).state_dict()
    assert state["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert state["fc1.weight"].shape == (2048, 2048)
    assert state["fc_audioset.weight"].shape == (527, 2048)
    assert state["bn0.running_var"].shape == (64,)
    assert not any(key.startswith(("frontend.", "spectrogram_extractor.")) for key in state)


def test_bad_sizes_fail_clearly():
    with pytest.raises(ValueError, match="n_mels"):
        AUDIO_ENCODERS.build("cnn14", {"n_mels": 16})
    model = CNN14Encoder(CNN14Config(out_dim=32, num_classes=2))
    with pytest.raises(ValueError, match="at least 32 frames"):
        model(torch.randn(1, 320 * 20))
