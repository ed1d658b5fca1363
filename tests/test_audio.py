import math

import numpy as np
import pytest
import torch

from arlib.speech.audio import hz_to_mel, log_mel, mel_filterbank, mel_to_hz


def test_mel_scale_anchor_points_and_inverse():
    assert hz_to_mel(0.0).item() == 0.0
    assert hz_to_mel(1000.0).item() == pytest.approx(1000.0, abs=0.1)  # the scale's anchor: 1000 Hz ~ 1000 mel
    f = torch.tensor([0.0, 50.0, 440.0, 4000.0, 8000.0])
    assert torch.allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-2)
    with pytest.raises(ValueError, match="f"):
        hz_to_mel(-1.0)


def test_filterbank_is_triangular_and_covers_the_band():
    fb = mel_filterbank(n_mels=40, n_fft=512, sample_rate=16000)
    assert fb.shape == (40, 257)
    assert (fb >= 0).all() and fb.max() <= 1.0 + 1e-6
    peaks = fb.argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all()  # centres increase with the filter index
    assert ((fb > 0).sum(dim=0)[5:-5] > 0).all()  # every inner frequency bin is covered by some filter


def test_log_mel_of_a_tone_peaks_at_its_frequency():
    sr, f0 = 16000, 1000.0
    t = torch.arange(sr) / sr
    wave = torch.sin(2 * math.pi * f0 * t)
    feats = log_mel(wave, sample_rate=sr, n_mels=80)
    assert feats.shape == (80, 1 + sr // 160)
    centres = mel_to_hz(torch.linspace(0, float(hz_to_mel(sr / 2)), 82))[1:-1]
    peak_channel = feats[:, 10:-10].mean(dim=1).argmax().item()
    assert abs(centres[peak_channel].item() - f0) < 60  # the strongest channel sits on the tone
    batch = log_mel(torch.stack([wave, 0.5 * wave]), sample_rate=sr)
    assert batch.shape == (2, 80, 101)
    ratio = (batch[0, peak_channel, 10:-10] - batch[1, peak_channel, 10:-10]).mean().item()
    assert np.isclose(ratio, math.log(4), atol=0.01)  # half the amplitude: a quarter of the power


@pytest.mark.parametrize("wave", [torch.zeros(100), torch.zeros(3, 2, 1000), torch.zeros(1000, dtype=torch.long)])
def test_log_mel_rejects_bad_waves(wave):
    with pytest.raises(ValueError, match="wave"):
        log_mel(wave)


def test_filterbank_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_mels"):
        mel_filterbank(0, 400, 16000)
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(40, 400, 16000, f_max=9000)
