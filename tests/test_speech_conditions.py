"""arlib.speech.conditions: noise at an exact SNR, a synthetic room's decay, speed perturbation."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from arlib.speech.conditions import add_noise, reverberate, speed_perturb, synthetic_rir

SR = 16000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def speechlike(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A few harmonics under a syllable-rate envelope, with silences: (T,) float32, peak about 0.5."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    g = gen(seed)
    f0 = 100 + 60 * torch.rand(1, generator=g, dtype=torch.float64)
    voiced = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    envelope = torch.clamp(torch.sin(2 * math.pi * 3 * t), min=0)  # 3 syllables a second, silent half the time
    return (0.3 * voiced * envelope).float()


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    clean, noisy = clean.double(), noisy.double()
    return 10 * math.log10(float(clean.square().sum() / (noisy - clean).square().sum()))


def peak_frequency(x: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(x.double() * torch.hann_window(x.numel(), dtype=torch.float64)).abs()
    return float(torch.fft.rfftfreq(x.numel(), 1 / SR)[spectrum.argmax()])


# --- add_noise --------------------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [20.0, 5.0, 0.0, -5.0, 40.0])
@pytest.mark.parametrize("given_noise", [False, True])
def test_add_noise_reaches_the_requested_snr_exactly(snr, given_noise):
    wave = speechlike()
    noise = torch.randn(3001, generator=gen(5)) * 0.01 + 0.002 if given_noise else None  # shorter: tiled
    noisy = add_noise(wave, snr, gen(1), noise=noise)
    assert noisy.dtype == torch.float32 and noisy.shape == wave.shape
    assert abs(snr_db(wave, noisy) - snr) < 1e-3


def test_add_noise_is_deterministic_given_the_generator_and_white_by_default():
    wave = speechlike()
    a, b, c = (add_noise(wave, 5, gen(seed)) for seed in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = (a - wave).double()
    assert abs(float(noise.mean())) < 0.05 * float(noise.std())  # zero mean
    spectrum = torch.fft.rfft(noise).abs().square()
    low, high = spectrum[: spectrum.numel() // 2].mean(), spectrum[spectrum.numel() // 2:].mean()
    assert 0.9 < float(low / high) < 1.1  # flat: white


def test_add_noise_tiles_and_crops_a_given_noise_from_a_drawn_offset():
    wave = speechlike(0.25)  # 4000 samples
    noise = torch.arange(1, 1001, dtype=torch.float64)  # 1000 samples: tiled four times, whatever the offset
    gain = math.sqrt(float(wave.double().square().mean() / noise.square().mean()) / 10.0)  # at 10 dB
    starts = set()
    for seed in range(6):
        scaled = (add_noise(wave, 10, gen(seed), noise=noise.float()).double() - wave.double()) / gain
        start = round(float(scaled[0])) - 1  # noise[k] = k + 1
        assert torch.allclose(scaled, noise[(start + torch.arange(wave.numel())) % 1000], atol=1e-3)
        starts.add(start)
    assert len(starts) > 1  # different generators hear different stretches


def test_add_noise_keeps_the_device_of_the_wave(device):
    wave = speechlike().to(device)
    noisy = add_noise(wave, 20, gen(0))
    assert noisy.device.type == device.type and noisy.dtype == torch.float32
    assert torch.allclose(noisy.cpu(), add_noise(wave.cpu(), 20, gen(0)), atol=1e-6)


# --- synthetic_rir and reverberate ------------------------------------------------------------------


def schroeder_rt60(h: torch.Tensor, sample_rate: int = SR) -> tuple[float, float]:
    """(T30 extrapolated to 60 dB, time where the decay curve crosses -60 dB) of the energy decay curve,
    Schroeder's backward integration EDC(t) = sum_{k >= t} h[k]**2 (ISO 3382: a line fitted from -5 to -35 dB)."""
    energy = h.double().square()
    edc = energy.flip(0).cumsum(0).flip(0)
    edc_db = 10 * torch.log10(edc / edc[0])
    t = torch.arange(h.numel(), dtype=torch.float64) / sample_rate
    sel = (edc_db <= -5) & (edc_db >= -35)
    slope, _ = np.polyfit(t[sel].numpy(), edc_db[sel].numpy(), 1)  # dB per second
    crossing = float(t[int((edc_db > -60).sum())]) if bool((edc_db <= -60).any()) else math.inf
    return -60.0 / slope, crossing


@pytest.mark.parametrize("rt60", [0.15, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_rir_energy_decays_60_db_in_rt60(rt60, seed):
    h = synthetic_rir(rt60, generator=gen(seed))
    assert h.dtype == torch.float32 and h.shape == (math.ceil(rt60 * SR),)
    assert abs(float(h.double().square().sum()) - 1) < 1e-5  # unit energy
    fitted, crossing = schroeder_rt60(h)
    assert abs(fitted - rt60) < 0.15 * rt60
    assert abs(crossing - rt60) < 0.15 * rt60


def test_synthetic_rir_direct_path_length_drr_and_determinism():
    h = synthetic_rir(0.4, 8000, generator=gen(0), length=5000)
    assert h.shape == (5000,) and abs(schroeder_rt60(h, 8000)[0] - 0.4) < 0.06
    assert torch.equal(h, synthetic_rir(0.4, 8000, generator=gen(0), length=5000))
    assert not torch.equal(h, synthetic_rir(0.4, 8000, generator=gen(1), length=5000))
    # the direct path: a unit impulse at 0 before normalization, so h[0] = 1 / ||h|| and the tail is noise
    tail_energy = float(h[1:].double().square().sum())
    assert abs(float(h[0]) ** 2 - (1 - tail_energy)) < 1e-6
    expected_drr = -10 * math.log10(0.4 * 8000 / (6 * math.log(10)))  # unit-variance tail, in expectation
    assert abs(10 * math.log10(float(h[0]) ** 2 / tail_energy) - expected_drr) < 1.0
    for drr in (-10.0, 0.0, 6.0):
        h = synthetic_rir(0.3, generator=gen(2), drr_db=drr).double()
        assert abs(10 * math.log10(float(h[0] ** 2 / h[1:].square().sum())) - drr) < 1e-4
    no_direct = synthetic_rir(0.3, generator=gen(2), direct=False)
    with_direct = synthetic_rir(0.3, generator=gen(2))
    assert abs(float(no_direct[0])) < 0.2 and float(with_direct[0]) > 0  # no unit impulse without it


def test_reverberate_convolves_keeps_the_length_and_the_peak():
    wave = speechlike(0.5)
    rir = synthetic_rir(0.3, generator=gen(0))
    out = reverberate(wave, rir)
    assert out.shape == wave.shape and out.dtype == torch.float32
    assert abs(float(out.abs().max()) - float(wave.abs().max())) < 1e-6
    full = np.convolve(wave.double().numpy(), rir.double().numpy())[: wave.numel()]  # the trusted convolution
    full *= float(wave.abs().max()) / np.abs(full).max()
    assert np.allclose(out.numpy(), full, atol=1e-6)
    # a unit impulse response changes nothing; a delayed one delays
    assert torch.allclose(reverberate(wave, torch.tensor([1.0])), wave)
    delayed = reverberate(wave, torch.tensor([0.0, 0.0, 0.0, 2.0]))
    assert torch.allclose(delayed[3:], wave[:-3], atol=1e-7) and torch.allclose(delayed[:3], torch.zeros(3), atol=1e-12)
    assert torch.equal(reverberate(torch.zeros(100), rir[:10]), torch.zeros(100))  # silence stays silent


def test_reverberation_smears_speech_over_time():
    """The envelope of reverberant speech fills the silences between syllables."""
    wave = speechlike(1.0)
    out = reverberate(wave, synthetic_rir(0.6, generator=gen(0)))
    silent = wave.abs() < 1e-4
    assert float(out[silent].double().square().mean()) > 1e3 * float(wave[silent].double().square().mean() + 1e-12)


# --- speed_perturb ----------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.5, 2.0, 0.95, 1.0, 1.2345678])
@pytest.mark.parametrize("f", [300.0, 1000.0, 3000.0])
def test_speed_perturb_scales_length_and_frequency(factor, f):
    t = torch.arange(SR, dtype=torch.float64) / SR
    tone = (0.5 * torch.sin(2 * math.pi * f * t)).float()
    out = speed_perturb(tone, factor)
    assert out.dtype == torch.float32 and out.shape == (round(SR / factor),)
    resolution = SR / out.numel()  # the FFT's bin width
    assert abs(peak_frequency(out) - f * factor) <= resolution
    assert abs(float(out[100:-100].abs().max()) - 0.5) < 5e-3  # the pass band keeps the amplitude


def test_speed_perturb_matches_scipy_polyphase_resampling():
    """Factor 0.9 reads the input at 9/10 of a sample per output sample: scipy's resample_poly(x, 10, 9)."""
    wave = speechlike(0.5).double()
    ours = speed_perturb(wave.float(), 0.9).double().numpy()
    theirs = resample_poly(wave.numpy(), 10, 9)[: ours.size]
    inner = slice(200, ours.size - 200)
    assert np.abs(ours[inner] - theirs[inner]).max() < 2e-3 * np.abs(theirs).max()


def test_speed_perturb_removes_what_would_alias():
    """Speeding a 7.6 kHz tone up by 1.1 would put it above Nyquist: the low-pass removes it (below -50 dB),
    while a 6.5 kHz one, inside the pass band, keeps its amplitude."""
    t = torch.arange(SR, dtype=torch.float64) / SR
    out = speed_perturb(torch.sin(2 * math.pi * 7600 * t).float(), 1.1)
    assert float(out[400:-400].abs().max()) < 10 ** (-50 / 20)
    kept = speed_perturb(torch.sin(2 * math.pi * 6500 * t).float(), 1.1)
    assert abs(float(kept[400:-400].abs().max()) - 1) < 0.01


def test_speed_perturb_keeps_the_device_and_chunks_long_inputs(device):
    wave = speechlike(1.3).to(device)  # 20800 samples: more than one chunk of output
    out = speed_perturb(wave, 0.9)
    assert out.device.type == device.type and out.shape == (round(20800 / 0.9),)
    assert torch.allclose(out.cpu(), speed_perturb(wave.cpu(), 0.9), atol=1e-5)
    assert torch.equal(speed_perturb(wave, 1.0).cpu(), wave.cpu())


def test_conditions_compose_on_real_length_speech():
    wave = speechlike(2.0)
    out = add_noise(reverberate(speed_perturb(wave, 1.1), synthetic_rir(0.5, generator=gen(0))), 20, gen(1))
    assert out.shape == (round(wave.numel() / 1.1),) and torch.isfinite(out).all()
