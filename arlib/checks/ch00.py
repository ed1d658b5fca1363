"""Checks for chapter 0 (getting started)."""

from __future__ import annotations

import math
from collections import Counter

import torch

from arlib.checks.core import Check, CheckFailed
from arlib.speech.audio import hz_to_mel, mel_to_hz


def _entropy_bits(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def unigram_entropy(fn) -> None:
    """Exercise 0.1: ``fn(text) -> float``, the entropy in bits of the text's character frequencies."""
    with Check("0.1", "unigram entropy") as c:
        hint = "count each character, turn counts into frequencies p, and sum -p * log2(p)"
        for text in ["aaaa", "ab", "abcd", "aab", "to be, or not to be", "x"]:
            got = c.number(c.call(fn, text), f"the entropy of {text!r}", "return a Python float")
            expected = _entropy_bits(text)
            c.expect(abs(got - expected) < 1e-6, f"entropy of {text!r} in bits", round(expected, 6),
                     got, hint + (" (log base 2: bits, not nats)" if abs(got - expected * math.log(2))
                                  < 1e-6 else ""))


def class_means(fn) -> None:
    """Exercise 0.2: ``fn(images, labels, num_classes) -> (C, H, W)`` float mean image of every class."""
    with Check("0.2", "mean image per class") as c:
        g = torch.Generator().manual_seed(0)
        for n, classes, size in [(30, 3, 4), (100, 10, 5), (7, 7, 2)]:
            labels = torch.cat([torch.arange(classes), torch.randint(0, classes, (n - classes,), generator=g)])
            images = torch.randint(0, 256, (n, size, size), generator=g, dtype=torch.uint8)
            got = c.call(fn, images, labels, classes)
            expected = torch.stack([images[labels == k].float().mean(0) for k in range(classes)])
            c.expect(isinstance(got, torch.Tensor) and got.is_floating_point(), "a float tensor",
                     "float tensor", type(got).__name__ if not isinstance(got, torch.Tensor) else got.dtype,
                     "convert uint8 images to float before averaging (uint8 sums overflow)")
            c.close(got, expected, f"class means for {n} images of {classes} classes", atol=1e-4,
                    hint="select the images whose label equals k, then average over the image axis")


def frame_signal(fn) -> None:
    """Exercise 0.3: ``fn(wave, frame_length, hop) -> (n_frames, frame_length)`` without padding."""
    with Check("0.3", "framing a signal") as c:
        for length, frame, hop in [(10, 4, 2), (10, 4, 3), (8, 8, 1), (20, 5, 5), (9, 2, 7)]:
            wave = torch.arange(length, dtype=torch.float32)
            got = c.call(fn, wave, frame, hop)
            n_frames = 1 + (length - frame) // hop
            expected = torch.stack([wave[i * hop: i * hop + frame] for i in range(n_frames)])
            c.close(got, expected, f"frames of a {length}-sample signal (frame {frame}, hop {hop})",
                    hint="frame i starts at sample i * hop; keep only frames that fit entirely "
                         "(1 + (T - frame_length) // hop of them)")


def mel_scale(to_mel, to_hz) -> None:
    """Exercise 0.4: ``to_mel(f_hz)`` and its inverse ``to_hz(m)``, elementwise on tensors."""
    with Check("0.4", "the mel scale") as c:
        freqs = torch.tensor([0.0, 100.0, 700.0, 1000.0, 4000.0, 8000.0])
        got = c.call(to_mel, freqs)
        c.close(got, hz_to_mel(freqs), "mels of 0, 100, 700, 1000, 4000, 8000 Hz", atol=1e-2,
                hint="m = 2595 * log10(1 + f / 700); use torch.log10 so it works elementwise")
        mels = torch.tensor([0.0, 500.0, 1000.0, 2840.0])
        back = c.call(to_hz, mels)
        c.close(back, mel_to_hz(mels), "Hz of 0, 500, 1000, 2840 mels", atol=1e-2,
                hint="solve m = 2595 * log10(1 + f / 700) for f")
        round_trip = c.call(to_hz, c.call(to_mel, freqs))
        c.close(round_trip, freqs, "to_hz(to_mel(f)) == f", atol=1e-2, rtol=1e-4,
                hint="the two functions must be exact inverses")


__all__ = ["unigram_entropy", "class_means", "frame_signal", "mel_scale", "CheckFailed"]
