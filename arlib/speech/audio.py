"""Speech features with torch only: the mel scale, a triangular mel filterbank, log-mel spectrograms,
SpecAugment masks.

The mel scale follows O'Shaughnessy (1987): m = 2595 log10(1 + f / 700).
"""

from __future__ import annotations

import torch

from arlib.validate import describe, int_at_least, int_in_range, is_number, number_in, positive_int


def _real_tensor(x, name: str, what: str) -> torch.Tensor:
    """``x`` (a real number or a tensor of them) as a float32 tensor without NaN, else ``ValueError``."""
    if isinstance(x, torch.Tensor):
        ok = not x.is_complex() and x.dtype != torch.bool
    else:
        ok = is_number(x)
    if not ok:
        raise ValueError(f"{name}: expected {what} (a real number or a tensor), got {describe(x)}")
    x = torch.as_tensor(x, dtype=torch.float32)
    if torch.isnan(x).any():
        raise ValueError(f"{name}: expected {what}, got NaN")
    return x


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """Frequency in Hz -> mels (elementwise)."""
    f = _real_tensor(f, "f", "non-negative frequencies in Hz")
    if (f < 0).any():
        raise ValueError("f: expected non-negative frequencies in Hz")
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor | float) -> torch.Tensor:
    """Mels -> frequency in Hz (elementwise), the inverse of :func:`hz_to_mel`."""
    m = _real_tensor(m, "m", "non-negative mels")
    if (m < 0).any():
        raise ValueError("m: expected non-negative mels (negative ones are below 0 Hz)")
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
                   ) -> torch.Tensor:
    """Triangular filters, equally spaced in mels, over the ``n_fft // 2 + 1`` STFT bins: (n_mels, n_freqs)."""
    for name, value in (("n_mels", n_mels), ("n_fft", n_fft), ("sample_rate", sample_rate)):
        positive_int(value, name)
    f_max = sample_rate / 2 if f_max is None else f_max
    number_in(f_min, "f_min", 0, sample_rate / 2)
    number_in(f_max, "f_max", 0, sample_rate / 2)
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"f_min, f_max: expected 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (F,)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2))  # (M+2,)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
    rising = (freqs - lower) / (center - lower)
    falling = (upper - freqs) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)  # (M, F)


def log_mel(wave: torch.Tensor, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160, n_mels: int = 80,
            eps: float = 1e-6) -> torch.Tensor:
    """Log-mel spectrogram of a waveform (T,) or batch (B, T): (n_mels, frames) or (B, n_mels, frames).

    Defaults give 25 ms windows every 10 ms at 16 kHz, the usual speech front end.
    """
    if not isinstance(wave, torch.Tensor) or wave.dim() not in (1, 2) or not wave.is_floating_point():
        raise ValueError("wave: expected a float tensor of shape (T,) or (B, T)")
    for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop", hop), ("n_mels", n_mels)):
        positive_int(value, name)
    number_in(eps, "eps", 0, bounds="()", expected="a number > 0 (log(mel + eps) must be finite)")
    if not torch.isfinite(wave).all():
        raise ValueError("wave: expected finite samples, got NaN or inf")
    if wave.shape[-1] < n_fft:
        raise ValueError(f"wave: expected at least n_fft={n_fft} samples, got {wave.shape[-1]}")
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    power = spec.abs() ** 2  # (..., F, frames)
    mel = mel_filterbank(n_mels, n_fft, sample_rate).to(wave.device) @ power  # (..., M, frames)
    return torch.log(mel + eps)


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator, freq_masks: int = 2,
                 freq_width: int = 10, time_masks: int = 2, time_ratio: float = 0.05) -> torch.Tensor:
    """SpecAugment's masks (Park et al. 2019) on a batch of normalized frames (B, T, M): ``freq_masks``
    bands of up to ``freq_width`` channels and ``time_masks`` spans of up to ``time_ratio`` of each
    utterance set to 0 (the mean after normalization). Time warping is left out. Returns a new tensor."""
    if not isinstance(feats, torch.Tensor) or feats.dim() != 3 or not feats.is_floating_point():
        raise ValueError(f"feats: expected a float tensor (B, T, M) of frames, got {describe(feats)}")
    B, T, M = feats.shape
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (B,) or lengths.is_floating_point() \
            or lengths.dtype == torch.bool or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"lengths: expected an integer tensor ({B},) of lengths in [0, {T}], got {describe(lengths)}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    int_in_range(freq_width, "freq_width", 0, M)
    int_at_least(freq_masks, "freq_masks", 0)
    int_at_least(time_masks, "time_masks", 0)
    number_in(time_ratio, "time_ratio", 0, 1, expected="a fraction in [0, 1]")
    u = torch.rand(B, freq_masks + time_masks, 2, generator=generator)  # widths and starts, on the CPU
    channel, frame = torch.arange(M), torch.arange(T)
    keep = torch.ones(B, T, M, dtype=torch.bool)
    for i in range(freq_masks):
        width = (u[:, i, 0] * (freq_width + 1)).long()  # (B,) in 0..freq_width
        start = (u[:, i, 1] * (M - width + 1)).long()
        band = (channel >= start[:, None]) & (channel < (start + width)[:, None])  # (B, M)
        keep &= ~band[:, None, :]
    max_span = (lengths.cpu().float() * time_ratio).long()  # (B,)
    for i in range(freq_masks, freq_masks + time_masks):
        width = (u[:, i, 0] * (max_span + 1)).long()
        start = (u[:, i, 1] * (lengths.cpu() - width + 1)).long()
        span = (frame >= start[:, None]) & (frame < (start + width)[:, None])  # (B, T)
        keep &= ~span[:, :, None]
    return feats * keep.to(feats.device)
