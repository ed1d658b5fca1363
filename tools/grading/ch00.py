"""Grading specs of chapter 0 (getting started): entropy, class means, framing, the mel scale."""

from __future__ import annotations

import math
from collections import Counter

import torch

from tools.grading.core import Case, Spec, close, t


def _texts(rng):
    cases = []
    for k in range(8):
        alphabet = "abcdefghijklmnopqrstuvwxyz ,.;!"[: int(rng.integers(1, 30))]
        n = 1 if k == 0 else int(rng.integers(2, 200))
        weights = rng.dirichlet([0.5] * len(alphabet))
        text = "".join(rng.choice(list(alphabet), size=n, p=weights))
        cases.append(Case((text,), f"a text of {n} characters over {len(set(text))} symbols"))
    return cases


def _entropy_bits(case):
    text = case.args[0]
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _images(rng):
    cases = []
    for _ in range(4):
        classes, size = int(rng.integers(1, 12)), int(rng.integers(1, 7))
        n = classes + int(rng.integers(0, 60))
        labels = rng.permutation(list(range(classes)) + list(rng.integers(0, classes, size=n - classes)))
        images = rng.integers(0, 256, size=(n, size, size))
        cases.append(Case((t(images, torch.uint8), t(labels, torch.long), classes),
                          f"{n} images of {size}x{size} in {classes} classes"))
    return cases


def _means(case):
    images, labels, classes = case.args
    return torch.stack([images[labels == k].double().mean(0) for k in range(classes)])


def _frames(rng):
    cases = []
    for k in range(6):
        length = int(rng.integers(1, 60))
        frame = length if k == 0 else int(rng.integers(1, length + 1))
        hop = int(rng.integers(frame + 1, frame + 8)) if k == 1 else int(rng.integers(1, frame + 1))
        wave = t(rng.standard_normal(length), torch.float32)
        cases.append(Case((wave, frame, hop), f"{length} samples, frame {frame}, hop {hop}"))
    return cases


def _framed(case):
    wave, frame, hop = case.args
    n = 1 + (len(wave) - frame) // hop
    return torch.stack([wave[i * hop: i * hop + frame] for i in range(n)])


def _mel_cases(rng):
    hz = t(rng.uniform(0, 24000, size=int(rng.integers(3, 20))))
    mels = t(rng.uniform(0, 3900, size=int(rng.integers(3, 20))))
    return [Case((hz,), f"to_mel of {len(hz)} frequencies", fn=0), Case((mels,), f"to_hz of {len(mels)} mels", fn=1),
            Case((hz.float(),), "to_mel of float32 frequencies", fn=0), Case((mels[:1],), "to_hz of one mel", fn=1)]


def _mel_expected(case):
    x = case.args[0].double()
    return 2595.0 * torch.log10(1.0 + x / 700.0) if case.fn == 0 else 700.0 * (10.0 ** (x / 2595.0) - 1.0)


def _mel_compare(got, expected, case):
    return close(1e-2 if case.args[0].dtype == torch.float32 else 1e-6, 1e-6)(got, expected, case)


SPECS = [
    Spec("0.1", ("unigram_entropy_bits",), (), _texts, _entropy_bits, close(1e-9, 1e-9)),
    Spec("0.2", ("class_means",), (), _images, _means, close(1e-4)),
    Spec("0.3", ("frame_signal",), (), _frames, _framed, close(0.0)),
    Spec("0.4", ("to_mel", "to_hz"), ("arlib.speech.audio.hz_to_mel", "arlib.speech.audio.mel_to_hz"), _mel_cases,
         _mel_expected, _mel_compare),
]
