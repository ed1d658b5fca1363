"""Grading specs of chapter 5: the mel filterbank, CTC's forward recursion and collapse, integrate-and-fire."""

from __future__ import annotations

import math

import numpy as np
import torch

from tools.grading.core import Case, Spec, close, describe, number_of, same_ids, t, tensor_close

IMPOSSIBLE = -1e29


def _mel_cases(rng):
    cases = [Case((1, int(rng.choice([16, 32, 64])), int(rng.choice([8000, 16000]))), "a single filter")]
    for _ in range(4):
        n_fft = 2 * int(rng.integers(4, 513))
        sr = int(rng.choice([8000, 16000, 22050, 44100, 48000]))
        n_mels = int(rng.integers(1, min(90, n_fft // 2)))
        cases.append(Case((n_mels, n_fft, sr), f"{n_mels} filters, n_fft = {n_fft}, {sr} Hz"))
    return cases


def _mel(case):
    from arlib.speech.audio import mel_filterbank

    return mel_filterbank(*case.args).double()


def _ctc_cases(rng):
    cases = []
    specs = [(int(rng.integers(6, 40)), int(rng.integers(3, 8)), None, 0) for _ in range(5)]
    specs += [(int(rng.integers(3, 9)), 4, [], 0), (3, 5, "fill", 0), (2, 4, "impossible", 0),
              (int(rng.integers(6, 20)), 5, None, 4), (int(rng.integers(100, 200)), 8, None, 0)]
    for T, C, target, blank in specs:
        labels = [c for c in range(C) if c != blank]
        if target is None:
            U = int(rng.integers(1, max(2, T // 3)))
            target = [int(x) for x in rng.choice(labels, U)]
            if U > 1 and rng.uniform() < 0.5:
                target[1] = target[0]  # a repeated label
        elif target == "fill":
            target = [int(x) for x in rng.choice(labels, T, replace=False)]
        elif target == "impossible":
            target = [labels[0], labels[0]]
        logits = rng.standard_normal((T, C)) * rng.uniform(0.5, 3)
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        kwargs = {"blank": blank} if blank else {}
        cases.append(Case((t(lp), target), f"{T} frames, {C} classes, target {target[:8]}, blank {blank}",
                          kwargs=kwargs))
    return cases


def _ctc(case):
    from arlib.speech.ctc import ctc_forward

    lp, target = case.args
    targets = torch.tensor([target], dtype=torch.long).view(1, -1)
    return float(ctc_forward(lp[None], [lp.shape[0]], targets, [len(target)], case.kwargs.get("blank", 0))[0])


def _ctc_compare(got, expected, case):
    value = number_of(got)
    if value is None:
        return f"expected a number, got {describe(got)}"
    if expected <= IMPOSSIBLE:
        return None if value <= IMPOSSIBLE else f"got {value:.6g}, expected -inf (no path)"
    ok = math.isfinite(value) and abs(value - expected) <= 1e-6 * (1 + abs(expected))
    return None if ok else f"got {value:.8g}, expected {expected:.8g}"


def _collapse_cases(rng):
    cases = [Case(([],), "no frames"), Case(([0] * int(rng.integers(1, 6)),), "blanks only")]
    for k in range(8):
        C, blank = int(rng.integers(2, 8)), 0
        if k >= 6:
            blank = int(rng.integers(1, C))
        labels = rng.integers(0, C, int(rng.integers(1, 30)))
        runs = np.repeat(labels, rng.integers(1, 4, len(labels)))
        kwargs = {"blank": blank} if blank else {}
        cases.append(Case(([int(x) for x in runs],), f"{len(runs)} frames, blank {blank}", kwargs=kwargs))
    return cases


def _collapse(case):
    labels, blank = case.args[0], case.kwargs.get("blank", 0)
    merged = [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]
    return [x for x in merged if x != blank]


def _cif_cases(rng):
    cases = []
    for k in range(6):
        T, d = int(rng.integers(1, 30)), int(rng.integers(1, 9))
        threshold = float(rng.choice([1.0, 1.0, 0.5, 2.0]))
        alpha = rng.uniform(0, threshold * 0.95, T)
        hidden = t(rng.standard_normal((T, d)), torch.float32 if k == 5 else torch.float64)
        kwargs = {"threshold": threshold} if threshold != 1.0 else {}
        cases.append(Case((hidden, t(alpha, hidden.dtype)), f"{T} frames, d = {d}, threshold {threshold}",
                          kwargs=kwargs))
    quarters = rng.choice([0.25, 0.5, 0.75], 8)  # exact landings on the threshold
    cases.append(Case((t(rng.standard_normal((8, 3))), t(quarters)), f"alpha = {quarters.tolist()} (exact landings)"))
    cases.append(Case((t(rng.standard_normal((3, 2))), t(rng.uniform(0, 0.3, 3))), "too little weight to fire"))
    return cases


def _cif(case):
    hidden, alpha = case.args[0].double(), case.args[1].double().tolist()
    threshold = case.kwargs.get("threshold", 1.0)
    w, e, out = 0.0, torch.zeros(hidden.shape[1], dtype=torch.float64), []
    for h, a in zip(hidden, alpha):
        if w + a < threshold:
            w, e = w + a, e + a * h
        else:
            out.append(e + (threshold - w) * h)
            w = a - (threshold - w)
            e = w * h
    return torch.stack(out) if out else torch.zeros(0, hidden.shape[1], dtype=torch.float64)


def _cif_compare(got, expected, case):
    return tensor_close(got, expected, 1e-5 if case.args[0].dtype == torch.float32 else 1e-9, 1e-5)


SPECS = [
    Spec("5.1", ("mel_triangles",), ("arlib.speech.audio.mel_filterbank",), _mel_cases, _mel, close(1e-4, 1e-4)),
    Spec("5.2", ("ctc_log_prob",), ("arlib.speech.ctc.ctc_forward", "arlib.speech.ctc.ctc_loss",
                                    "torch.nn.functional.ctc_loss", "torch.ctc_loss"),
         _ctc_cases, _ctc, _ctc_compare),
    Spec("5.3", ("ctc_collapse",), ("arlib.speech.ctc.greedy_decode", "arlib.speech.ctc.prefix_beam_search"),
         _collapse_cases, _collapse, same_ids),
    Spec("5.4", ("integrate_and_fire",), ("arlib.speech.paraformer.cif",), _cif_cases, _cif, _cif_compare),
]
