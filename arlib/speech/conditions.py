"""Test-time conditions: the same speech, heard through noise, a reverberant room, or faster or slower.

Three degradations of a 16 kHz float waveform (T,), each deterministic given a ``torch.Generator`` and
each returning a float32 tensor on the waveform's device:

- :func:`add_noise`: additive noise at an exact speech-to-noise power ratio (SNR, in dB);
- :func:`synthetic_rir` and :func:`reverberate`: a room impulse response drawn from the statistical model
  of late reverberation, and the waveform convolved with it;
- :func:`speed_perturb`: tempo and pitch changed together by resampling, Kaldi's (sox's) ``speed``
  perturbation (Ko, Peddinti, Povey and Khudanpur, 2015, "Audio augmentation for speech recognition",
  who train with the factors 0.9, 1.0 and 1.1).

A recognizer trained on clean synthetic speech meets none of these in training; scoring it under each
condition measures how much of its accuracy survives the move towards real recordings.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from arlib.validate import float_tensor, int_in_range, number_in
from arlib.validate import generator as check_generator

__all__ = ["add_noise", "synthetic_rir", "reverberate", "speed_perturb"]

DECAY_DB = 60.0  # the reverberation time RT60 is the time the energy takes to fall by this much
_FLOAT32_MAX = torch.finfo(torch.float32).max
_MAX_RATE = 384_000  # Hz: the highest sample rate accepted (a response is at most 10 s of it)


def _wave(wave, name: str = "wave") -> torch.Tensor:
    """A non-empty, finite, 1-D floating waveform within float32's range, or ``ValueError`` naming ``name``."""
    wave = float_tensor(wave, name, dim=1, expected="a 1-D floating-point waveform (T,)")
    if wave.numel() == 0:
        raise ValueError(f"{name}: expected at least one sample, got an empty waveform")
    if wave.dtype == torch.float64 and bool(wave.abs().max() > _FLOAT32_MAX):
        raise ValueError(f"{name}: expected samples within float32's range (the result is float32), "
                         f"got a peak of {float(wave.abs().max()):.3g}")
    return wave


def _precision(device: torch.device) -> torch.dtype:
    """float64 for the arithmetic (sums of squares, FFTs, filters), but float32 on mps, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _decibels(value, name: str, what: str) -> float:
    """A level in dB in [-100, 100] (beyond, 10 ** (dB / 10) leaves float64's useful range), else ``ValueError``."""
    return float(number_in(value, name, -100, 100, expected=f"{what} in dB, a number in [-100, 100]"))


# --- additive noise ---------------------------------------------------------------------------------


def add_noise(wave: torch.Tensor, snr_db: float, generator: torch.Generator,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """``wave`` plus noise scaled so that the speech-to-noise power ratio is exactly ``snr_db``.

    With ``P(x) = mean(x**2)`` over the T samples, the noise ``n`` is scaled by
    ``g = sqrt(P(wave) / (P(n) 10**(snr_db / 10)))``, so that ``10 log10(P(wave) / P(g n)) = snr_db``
    (computed in float64, float32 on mps; the float32 result keeps it to 1e-5 dB or better from -5 to 40 dB).
    The noise is white Gaussian noise drawn from ``generator`` by default; a given ``noise`` waveform (1-D, not
    silent) is tiled and cropped to T samples from an offset drawn from ``generator``, so that different calls
    hear different stretches of a long recording. The sum is not clipped: at 5 dB it may exceed [-1, 1].

    The power is the mean over the whole waveform, silences included, as torchaudio's ``add_noise`` measures
    it: within the spoken stretches the SNR is higher than ``snr_db`` (corpora such as Aurora-2 measure the
    speech's active level instead, ITU-T P.56). The book hears its test sets at 20 and 5 dB.
    Returns float32 (T,) on ``wave``'s device; ``ValueError`` naming the argument for a silent or
    non-finite ``wave`` or ``noise``, an ``snr_db`` outside [-100, 100] or a missing generator.
    """
    wave = _wave(wave)
    snr_db = _decibels(snr_db, "snr_db", "a signal-to-noise ratio")
    check_generator(generator, optional=False)
    x = wave.detach().to(_precision(wave.device))  # (T,)
    T = x.numel()
    p_speech = x.square().mean()
    if not 0 < p_speech < math.inf:
        raise ValueError(f"wave: expected speech with a finite, non-zero power, got {float(p_speech)} "
                         "(the SNR of silence is undefined)")
    if noise is None:
        n = torch.randn(T, generator=generator, device=generator.device, dtype=_precision(generator.device))
        n = n.to(device=x.device, dtype=x.dtype)
    else:
        noise = _wave(noise, "noise").detach().to(device=x.device, dtype=x.dtype)
        start = int(torch.randint(noise.numel(), (1,), generator=generator, device=generator.device))
        n = noise[(start + torch.arange(T, device=x.device)) % noise.numel()]  # tiled, cropped to (T,)
    p_noise = n.square().mean()
    if not 0 < p_noise < math.inf:
        raise ValueError(f"noise: expected a finite, non-zero power over the waveform's length, got {float(p_noise)}")
    gain = torch.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (x + gain * n).to(torch.float32)


# --- reverberation ----------------------------------------------------------------------------------


def synthetic_rir(rt60: float, sample_rate: int = 16000, *, generator: torch.Generator, length: int | None = None,
                  direct: bool = True, drr_db: float | None = None) -> torch.Tensor:
    """A synthetic room impulse response: exponentially decaying Gaussian noise, (length,) float32.

    The book's variant is the simple exponential-decay model of late reverberation (Polack's statistical
    model, 1988): ``h[n] = b[n] 10**(-3 n / (rt60 sample_rate))`` with ``b`` white Gaussian noise, whose
    energy envelope ``10**(-6 t / rt60)`` falls 60 dB in ``rt60`` seconds, Sabine's reverberation time. It
    approximates what the image method simulates (Allen and Berkley, 1979; Habets' RIR generator), whose
    diffuse tail decays exponentially in the same way (Lehmann and Johansson, 2008, "Prediction of energy
    decay in room impulse responses simulated with an image-source model"); it has no early reflections and
    no frequency-dependent absorption, so it is a test of robustness to smearing over time, not a room.

    - ``direct``: ``h[0]`` is a unit impulse, the direct path from the talker (the tail then starts at
      ``n = 1``); without it the response is the tail alone.
    - ``drr_db``: the direct-to-reverberant energy ratio ``10 log10(h[0]**2 / sum(h[1:]**2))`` in dB, a number
      in [-100, 100], exact for the drawn tail. None keeps unit-variance noise against the unit impulse, which
      gives about ``-10 log10(rt60 sample_rate / (6 ln 10))`` dB (-25 dB for ``rt60 = 0.3`` s at 16 kHz: a
      talker far from the microphone). Needs ``direct``.
    - ``length``: samples, by default ``ceil(rt60 sample_rate)``, where the envelope has fallen 60 dB.

    The response is normalized to unit energy (``sum(h**2) = 1``). Returns float32 on ``generator``'s device.
    """
    rt60 = number_in(rt60, "rt60", 0, 10, bounds="(]", expected="a reverberation time in seconds in (0, 10]")
    sample_rate = int_in_range(sample_rate, "sample_rate", 1, _MAX_RATE, expected=f"an int in [1, {_MAX_RATE}] (Hz)")
    check_generator(generator, optional=False)
    if length is None:
        length = math.ceil(rt60 * sample_rate)
    else:
        length = int_in_range(length, "length", 2, 10 * _MAX_RATE,
                              expected=f"an int in [2, {10 * _MAX_RATE}] (samples)")
    if not isinstance(direct, bool):
        raise ValueError(f"direct: expected a bool, got {direct!r}")
    if drr_db is not None:
        drr_db = _decibels(drr_db, "drr_db", "a direct-to-reverberant ratio")
        if not direct:
            raise ValueError("drr_db: a direct-to-reverberant ratio needs the direct path (direct=True)")
    if length < 2:
        raise ValueError(f"rt60: expected a response of at least 2 samples, got rt60 * sample_rate = "
                         f"{rt60 * sample_rate}")
    dtype = _precision(generator.device)
    t = torch.arange(length, dtype=dtype, device=generator.device) / sample_rate  # (L,) seconds
    h = torch.randn(length, generator=generator, device=generator.device, dtype=dtype)
    h = h * 10.0 ** (-(DECAY_DB / 20.0) * t / rt60)  # amplitude falls 30 dB, energy 60 dB, per rt60
    if direct:
        tail = h[1:].square().sum()
        if drr_db is not None:
            if tail == 0:
                raise ValueError(f"rt60: a response of {rt60} s decays to nothing within one sample at "
                                 f"{sample_rate} Hz, so it has no reverberant energy to set drr_db against")
            h = h * torch.sqrt(10.0 ** (-drr_db / 10.0) / tail)
        h[0] = 1.0
    return (h / h.square().sum().sqrt()).to(torch.float32)


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``wave`` convolved with the impulse response ``rir``, cut to T samples and rescaled to ``wave``'s peak.

    ``y[t] = sum_k rir[k] wave[t - k]`` for ``t < T`` (the reverberant tail past the end of the waveform is
    dropped, so that transcripts and lengths stay aligned), computed with the FFT in float64; ``y`` is then
    scaled so that ``max |y| = max |wave|`` (a silent ``wave`` stays silent, and so does one that ``rir``
    delays past its end). Returns float32 (T,) on
    ``wave``'s device; ``rir`` must be a finite, 1-D, not all-zero float tensor.
    """
    wave = _wave(wave)
    rir = _wave(rir, "rir")
    if not bool(rir.ne(0).any()):
        raise ValueError("rir: expected an impulse response with some energy, got all zeros")
    x = wave.detach().to(_precision(wave.device))
    h = rir.detach().to(device=x.device, dtype=x.dtype)
    peak_in = x.abs().max()
    if peak_in == 0:
        return torch.zeros(x.numel(), dtype=torch.float32, device=x.device)
    T = x.numel()
    h = h[:T]  # taps past the waveform's end reach no kept sample
    if not bool(h.ne(0).any()):  # a pure delay longer than the waveform
        return torch.zeros(T, dtype=torch.float32, device=x.device)
    x, h = x / peak_in, h / h.abs().max()  # both scales cancel in the rescaling: this keeps the FFT in range
    n = 1 << (T + h.numel() - 2).bit_length()  # a power of two >= T + L - 1: no circular wrap-around
    y = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(h, n), n)[:T]  # (T,)
    peak_out = y.abs().max()
    if peak_out > 0:
        y = y * (peak_in / peak_out)
    return y.to(torch.float32)


# --- speed perturbation -----------------------------------------------------------------------------

_ZEROS = 32  # zero crossings of the windowed sinc on each side (-36 dB at 4 % past the cut-off, -56 dB at 9 %)
_ROLLOFF = 0.96  # the low-pass cut-off as a fraction of the lower Nyquist frequency
_MAX_DENOMINATOR = 1000  # the factor is read as the nearest fraction p / q with q at most this


def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """Speed perturbation: play ``wave`` ``factor`` times faster, raising tempo and pitch together.

    This is sox's ``speed`` effect as Kaldi's recipes use it (Ko et al., 2015, factors 0.9 and 1.1): the
    samples are read as if recorded at ``factor * 16 kHz`` and resampled to 16 kHz, so the length becomes
    ``round(T / factor)`` and a tone of f Hz becomes ``f * factor`` Hz. Output sample m interpolates the input
    at time ``m * factor`` with a Hann-windowed sinc (32 zero crossings a side), low-passed at 0.96 of the
    lower of the two Nyquist frequencies so that speeding up does not alias. The factor is read as the nearest
    fraction ``p / q`` with ``q <= 1000`` (0.9 is 9/10 exactly), so that the q output phases share q kernels
    and the filtering is q strided convolutions in float64 (polyphase resampling, as scipy's ``resample_poly``).

    ``factor`` is a number in [0.5, 2]; exactly 1 returns a float32 copy. Returns float32
    ``(round(T / factor),)`` on ``wave``'s device.
    """
    wave = _wave(wave)
    factor = float(number_in(factor, "factor", 0.5, 2.0, expected="a speed factor in [0.5, 2]"))
    T = wave.numel()
    out_len = round(T / factor)
    if out_len < 1:
        raise ValueError(f"wave: expected enough samples to keep one at factor {factor}, got {T}")
    dtype = _precision(wave.device)
    x = wave.detach().to(dtype)
    if factor == 1.0:
        return x.to(torch.float32).clone()
    ratio = Fraction(factor).limit_denominator(_MAX_DENOMINATOR)
    p, q = ratio.numerator, ratio.denominator  # output m reads the input at m p / q
    cutoff = 0.5 * min(1.0, q / p) * _ROLLOFF  # cycles per input sample
    half = _ZEROS / (2 * cutoff)  # the kernel's half-width in input samples
    K = math.ceil(half)
    taps = torch.arange(-K, K + 1, dtype=torch.float64)  # (2K+1,)
    phase = (torch.arange(q, dtype=torch.float64) * p % q) / q  # (q,) where output m = j + i q falls past its base
    d = phase[:, None] - taps  # (q, 2K+1) distance from the position read to each tap's sample
    window = torch.where(d.abs() < half, 0.5 + 0.5 * torch.cos(math.pi * d / half), torch.zeros_like(d))
    kernels = (2 * cutoff * torch.sinc(2 * cutoff * d) * window).to(device=x.device, dtype=dtype)  # (q, 2K+1)
    # float64 also keeps cuDNN's TF32 convolutions out: the result is the same on every device
    padded = torch.nn.functional.pad(x, (K, K + p + 1))  # x[i] is padded[i + K]
    out = torch.empty(out_len, dtype=dtype, device=x.device)
    for j in range(min(q, out_len)):  # outputs j, j + q, j + 2q, ... read from (j p) // q in steps of p
        count = len(range(j, out_len, q))
        base = (j * p) // q
        segment = padded[base:base + (count - 1) * p + 2 * K + 1]
        out[j::q] = torch.nn.functional.conv1d(segment[None, None], kernels[j][None, None], stride=p)[0, 0, :count]
    return out.to(torch.float32)
