"""Checks for chapter 5 (non-autoregressive speech recognition: the mel filterbank, CTC's forward
recursion and greedy collapse, Paraformer's continuous integrate-and-fire).

The letters are the book's: l' is the target with blanks interleaved, S its length, alpha_t the weight
the CIF predictor reads for frame t.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from arlib.checks.core import Check, as_token_list
from arlib.speech.audio import mel_filterbank
from arlib.speech.ctc import ctc_forward, greedy_decode
from arlib.speech.paraformer import cif

IMPOSSIBLE = -1e29  # a log-probability at or below this (or -inf) means "no path"


def _got(got):
    return got if isinstance(got, torch.Tensor) else type(got).__name__


def _scalar(got) -> float | None:
    """A Python float for a number or a one-element tensor; None for anything else."""
    if isinstance(got, bool):
        return None
    if isinstance(got, (int, float)):
        return float(got)
    if isinstance(got, torch.Tensor) and got.numel() == 1 and got.is_floating_point():
        return float(got.item())
    if isinstance(got, np.floating):
        return float(got)
    return None


def _matches(variants: list[tuple[object, str]], got, expected, same) -> str | None:
    """The hints of the mistakes that give ``got`` (and not the right answer), joined; None if none does."""
    found = [hint for value, hint in variants if same(got, value) and not same(expected, value)]
    return " Or: ".join(dict.fromkeys(found)) or None


# --- 5.1 -------------------------------------------------------------------------------------------


def _filterbank(n_mels, n_fft, sample_rate, spacing="mel", points=2, norm="peak", clamp=True):
    """Triangular filters in float64, and some mistakes (edges equally spaced in Hz, too few edges, filters
    normalized to unit area, negative sides left in)."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    if spacing == "mel":
        top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)
        edges = 700.0 * (10.0 ** (torch.linspace(0, top, n_mels + points, dtype=torch.float64) / 2595.0) - 1.0)
    else:
        edges = torch.linspace(0, sample_rate / 2, n_mels + points, dtype=torch.float64)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = torch.minimum((freqs - lower) / (center - lower), (upper - freqs) / (upper - center))
    if clamp:
        tri = tri.clamp_min(0)
    if norm == "area":
        tri = tri * 2 / (upper - lower)
    return tri


def mel_filterbank_matrix(fn) -> None:
    """Exercise 5.1: ``fn(n_mels, n_fft, sample_rate) -> (n_mels, n_fft // 2 + 1)`` triangular mel filters."""
    with Check("5.1", "mel filterbank") as c:
        hint = ("put n_mels + 2 edge frequencies equally spaced in mels from 0 to mel(sample_rate / 2) and turn "
                "them back into Hz; filter m rises linearly from 0 at edge m to 1 at edge m + 1 and falls back to 0 "
                "at edge m + 2, and is 0 elsewhere; bin k sits at k * sample_rate / n_fft Hz")
        cases = [(10, 64, 16000, "10 filters, n_fft = 64 at 16 kHz"),
                 (40, 400, 16000, "40 filters, n_fft = 400 at 16 kHz (25 ms windows)"),
                 (80, 512, 22050, "80 filters, n_fft = 512 at 22.05 kHz"),
                 (3, 8, 8000, "3 filters over the 5 bins of n_fft = 8 at 8 kHz"),
                 (5, 32, 48000, "5 filters, n_fft = 32 at 48 kHz"),
                 (1, 16, 8000, "a single filter (n_mels = 1), n_fft = 16 at 8 kHz"),
                 (128, 1024, 44100, "128 filters, n_fft = 1024 at 44.1 kHz (the lowest filters are narrower than "
                  "a bin)")]
        for n_mels, n_fft, sr, what in cases:
            got = c.call(fn, n_mels, n_fft, sr)
            F_ = n_fft // 2 + 1
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else None
            specific = None
            if shape == (n_mels - 1, F_):
                specific = ("n_mels triangles need n_mels + 2 edge frequencies: each filter has a lower edge, a "
                            "centre and an upper edge, and neighbours share two of them")
            elif shape == (F_, n_mels):
                specific = "one row per filter and one column per frequency bin: (n_mels, n_fft // 2 + 1)"
            c.expect(shape == (n_mels, F_) and got.is_floating_point(), f"a float tensor of shape (n_mels, n_fft "
                     f"// 2 + 1) = {(n_mels, F_)} for {what}", f"a float tensor of shape {(n_mels, F_)}", _got(got),
                     specific or "one row per filter, one column per frequency bin from 0 to sample_rate / 2")
            got = got.detach().double().cpu()
            expected = mel_filterbank(n_mels, n_fft, sr).double()
            variants = [
                (_filterbank(n_mels, n_fft, sr, spacing="hz"), "the centres must be equally spaced in mels, not in "
                 "Hz: space the edges evenly on the mel scale, then convert them to Hz"),
                (_filterbank(n_mels, n_fft, sr, norm="area"), "each triangle peaks at 1 at its centre frequency; "
                 "do not normalize the filters to unit area"),
                (_filterbank(n_mels, n_fft, sr, clamp=False), "outside its two neighbouring edges a filter is 0: "
                 "the two linear sides go negative there, so clip them at 0"),
                (_filterbank(n_mels, n_fft, sr, points=3)[:n_mels], "n_mels filters need exactly n_mels + 2 edges, "
                 "from 0 Hz to sample_rate / 2"),
            ]
            specific = _matches(variants, got, expected,
                                lambda a, b: a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4))
            if specific is None and got.min() < -1e-6:
                specific = variants[2][1]
            c.close(got, expected, f"the filters (arlib.speech.audio.mel_filterbank) for {what}", specific or hint,
                    atol=1e-4, rtol=1e-4)


# --- 5.2 -------------------------------------------------------------------------------------------


def _lse(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _ctc(log_probs, target, blank, skip_equal=False, final="both", reduce="lse", linear=False) -> float:
    """log p(target) by the forward recursion in plain Python, and some mistakes."""
    lp = log_probs.double().tolist()
    T = len(lp)
    ext = [blank]
    for label in target:
        ext += [label, blank]
    S = len(ext)
    if linear:
        y = [[math.exp(v) for v in row] for row in lp]
        a = [0.0] * S
        a[0] = y[0][ext[0]]
        if S > 1:
            a[1] = y[0][ext[1]]
        for t in range(1, T):
            new = []
            for s in range(S):
                total = a[s] + (a[s - 1] if s >= 1 else 0.0)
                if s >= 2 and ext[s] != blank and (skip_equal or ext[s] != ext[s - 2]):
                    total += a[s - 2]
                new.append(total * y[t][ext[s]])
            a = new
        p = a[S - 1] + (a[S - 2] if S > 1 and final == "both" else 0.0)
        return float(torch.tensor(p, dtype=torch.float64).log())  # log 0 = -inf, as torch would give
    combine = _lse if reduce == "lse" else max
    a = [-math.inf] * S
    a[0] = lp[0][ext[0]]
    if S > 1:
        a[1] = lp[0][ext[1]]
    for t in range(1, T):
        new = []
        for s in range(S):
            terms = [a[s]] + ([a[s - 1]] if s >= 1 else [])
            if s >= 2 and ext[s] != blank and (skip_equal or ext[s] != ext[s - 2]):
                terms.append(a[s - 2])
            new.append(combine(terms) + lp[t][ext[s]])
        a = new
    return combine([a[S - 1], a[S - 2]]) if S > 1 and final == "both" else a[S - 1]


def _same_log_prob(got: float, expected: float) -> bool:
    if expected <= IMPOSSIBLE:
        return got <= IMPOSSIBLE  # -inf included
    if not math.isfinite(got):
        return False
    return abs(got - expected) <= 1e-6 * (1 + abs(expected))


def ctc_forward_recursion(fn) -> None:
    """Exercise 5.2: ``fn(log_probs (T, C), target, blank=0) -> float``: log p(target | x), CTC's forward recursion."""
    with Check("5.2", "CTC forward recursion") as c:
        hint = ("run the recursion over l' = (_, l_1, _, ..., l_U, _) in log space: a_t(s) = logsumexp of a_{t-1}(s), "
                "a_{t-1}(s-1) and, when l'_s is a label other than l'_{s-2}, a_{t-1}(s-2), plus log y_t(l'_s); "
                "a_1 starts on the first blank or the first label, and the answer adds the paths ending on the last "
                "label and on the final blank")
        g = torch.Generator().manual_seed(52)

        def rand(T, C, scale=1.0):
            return torch.log_softmax(scale * torch.randn(T, C, generator=g, dtype=torch.float64), dim=-1)

        cases = [(rand(8, 5), [1, 2, 3], 0, "8 frames, 5 classes, target [1, 2, 3]"),
                 (rand(12, 6, 2.0), [4, 2, 5, 1], 0, "12 frames of peaked distributions, target [4, 2, 5, 1]"),
                 (rand(6, 4), [1, 1], 0, "a repeated label, target [1, 1] over 6 frames"),
                 (rand(9, 4), [2, 2, 3, 3], 0, "repeated labels, target [2, 2, 3, 3] over 9 frames"),
                 (rand(5, 4), [], 0, "an empty target over 5 frames"),
                 (rand(3, 5), [1, 2, 3], 0, "target [1, 2, 3] exactly filling 3 frames"),
                 (rand(5, 3), [2, 2, 2], 0, "target [2, 2, 2] exactly filling 5 frames (a blank between repeats)"),
                 (rand(1, 4), [3], 0, "a single frame, target [3]"),
                 (rand(2, 4), [1, 2, 3], 0, "target [1, 2, 3] in 2 frames (impossible)"),
                 (rand(2, 4), [1, 1], 0, "target [1, 1] in 2 frames (impossible: the repeat needs a blank between)"),
                 (rand(7, 5), [0, 3, 0, 2], 4, "blank = 4 (the last class), target [0, 3, 0, 2] over 7 frames")]
        long = rand(400, 10)
        cases.append((long, torch.randint(1, 10, (20,), generator=g).tolist(), 0,
                      "400 frames, 10 classes, a target of 20 labels"))
        for log_probs, target, blank, what in cases:
            args = (log_probs.clone(), list(target)) + ((blank,) if blank != 0 else ())
            got = c.call(fn, *args)
            value = _scalar(got)
            c.expect(value is not None, f"a single number for {what}", "a float", _got(got),
                     "return log p(target | x) as a Python float (or a one-element tensor)")
            T = log_probs.shape[0]
            expected = float(ctc_forward(log_probs[None], [T], torch.tensor([target], dtype=torch.long).view(1, -1),
                                         [len(target)], blank)[0])
            variants = [
                (_ctc(log_probs, target, blank, skip_equal=True), "the skip from l'_{s-2} to l'_s is allowed only "
                 "into a label that differs from l'_{s-2}: between two equal labels a path must pass through a "
                 "blank, or 'a a' would collapse to 'a'"),
                (_ctc(log_probs, target, blank, final="last"), "a path may end on the final blank or on the last "
                 "label: p(l | x) = a_T(S) + a_T(S-1)"),
                (_ctc(log_probs, target, blank, reduce="max"), "that is the log-probability of the single best path "
                 "(Viterbi); p(l | x) sums over all paths: combine with logsumexp, not max"),
                (_ctc(log_probs, target, blank, linear=True), "over hundreds of frames the products of probabilities "
                 "underflow to 0 (float64 stops near 1e-308): stay in log space and add with logsumexp"),
            ]
            specific = _matches(variants, value, expected, lambda a, b: _same_log_prob(a, b))
            if specific is None and expected <= IMPOSSIBLE < value:
                specific = ("when the frames cannot hold the target (each label needs a frame, and a repeated label a "
                            "blank frame between) no path exists: return -inf (a value below -1e29 is accepted)")
            c.expect(_same_log_prob(value, expected), f"log p(target | x) (arlib.speech.ctc.ctc_forward) for {what}",
                     "-inf (no path)" if expected <= IMPOSSIBLE else expected, value, specific or hint)


# --- 5.3 -------------------------------------------------------------------------------------------


def _collapse(labels, blank, order="collapse first", drop=True, consecutive=True):
    """The collapse map B, and some mistakes."""
    if order == "drop first":
        labels = [x for x in labels if x != blank]
    if consecutive:
        out = [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]
    else:
        out = list(dict.fromkeys(labels))  # every repeat merged, also far apart
    return [x for x in out if x != blank] if drop else out


def ctc_greedy_collapse(fn) -> None:
    """Exercise 5.3: ``fn(frame_labels, blank=0) -> labels``: merge runs of repeats, then remove the blanks."""
    with Check("5.3", "CTC greedy collapse") as c:
        hint = ("walk along the frames and keep a label when it differs from the previous frame's label (the first "
                "frame of each run), then remove the blanks from what you kept")
        g = torch.Generator().manual_seed(53)
        path = torch.randint(0, 5, (40,), generator=g).repeat_interleave(torch.randint(1, 4, (40,), generator=g))
        cases = [([3, 3, 0, 3, 1, 3], 0, "'a a _ a b a'"),
                 ([3, 3, 0, 3], 0, "'a a _ a'"),
                 ([8, 8, 0, 5, 0, 12, 12, 0, 12, 12, 15], 0, "'h h _ e _ l l _ l l o'"),
                 ([0, 0, 0], 0, "blanks only"),
                 ([], 0, "no frames at all"),
                 ([4], 0, "a single frame"),
                 ([1, 1, 2, 3, 3, 3, 1], 0, "no blanks at all"),
                 ([1, 2, 1, 0, 2], 0, "a label that comes back after another one"),
                 ([0, 0, 7, 7, 0, 0], 0, "blanks at both ends"),
                 ([2, 1, 1, 2, 2, 0, 0, 2, 0], 2, "blank = 2, and label 0 is a real label"),
                 (path.tolist(), 0, f"a path of {len(path)} frames with runs of repeats")]
        for labels, blank, what in cases:
            args = (list(labels),) + ((blank,) if blank != 0 else ())
            got = c.call(fn, *args)
            ids = as_token_list(got)
            c.expect(ids is not None, f"a list of labels for {what}", "a list of ints", _got(got),
                     "return the transcript as a list of ints")
            C = max(labels + [blank]) + 1
            if labels:
                onehot = F.one_hot(torch.tensor(labels), C).double()[None]
                expected = greedy_decode(onehot, blank=blank)[0]
            else:
                expected = []
            variants = [
                (_collapse(labels, blank, order="drop first"), "merge the repeats before removing the blanks: the "
                 "blank between two equal labels is what keeps them apart ('a _ a' is 'a a')"),
                (_collapse(labels, blank, drop=False), f"after merging the repeats, remove the blanks (label {blank})"),
                (_collapse(labels, blank, consecutive=False), "only consecutive repeats merge: a label may come back "
                 "later in the transcript, after a blank or another label"),
            ]
            specific = _matches(variants, ids, expected, lambda a, b: a == b)
            c.expect(ids == expected, f"the collapsed labels of {labels} (blank = {blank}) for {what}", expected, ids,
                     specific or hint)


# --- 5.4 -------------------------------------------------------------------------------------------


def _fire(hidden, alpha, threshold=1.0, split=True, carry=True, strict=False, fire_last=False):
    """Integrate and fire by the loop, in float64, and some mistakes."""
    hidden, alpha = hidden.double(), alpha.double().tolist()
    d = hidden.shape[1]
    acc, emb, out = 0.0, torch.zeros(d, dtype=torch.float64), []
    for t, a in enumerate(alpha):
        if (acc + a > threshold) if strict else (acc + a >= threshold):
            part = threshold - acc if split else a
            out.append(emb + part * hidden[t])
            acc = a - (threshold - acc) if carry else 0.0
            emb = acc * hidden[t] if carry and split else torch.zeros(d, dtype=torch.float64)
        else:
            acc, emb = acc + a, emb + a * hidden[t]
    if fire_last and acc > 0:
        out.append(emb)
    return torch.stack(out) if out else torch.zeros(0, d, dtype=torch.float64)


def cif_fire(fn) -> None:
    """Exercise 5.4: ``fn(hidden (T, d), alpha (T,), threshold=1.0) -> (N, d)``, continuous integrate-and-fire."""
    with Check("5.4", "continuous integrate-and-fire") as c:
        hint = ("add alpha_t * h_t to the current token and alpha_t to its weight; at the frame where the weight "
                "reaches the threshold, only the part threshold - (weight so far) of alpha_t goes to the current "
                "token, which fires, and the rest of alpha_t starts the next one with that frame; a token still "
                "short of the threshold at the end does not fire")
        g = torch.Generator().manual_seed(54)

        def rand(T, d, low, high):
            return (torch.randn(T, d, generator=g, dtype=torch.float64),
                    low + (high - low) * torch.rand(T, generator=g, dtype=torch.float64))

        t = lambda *values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
        cases = [(*rand(10, 4, 0.05, 0.95), 1.0, "10 random frames, d = 4"),
                 (*rand(30, 8, 0.0, 0.6), 1.0, "30 random frames, d = 8"),
                 (torch.randn(4, 3, generator=g, dtype=torch.float64), t(0.5, 0.5, 0.25, 0.75), 1.0,
                  "alpha = [0.5, 0.5, 0.25, 0.75]: the weight lands exactly on the threshold, twice"),
                 (torch.randn(6, 2, generator=g, dtype=torch.float64), t(0.25, 0.75, 0.5, 0.625, 0.125, 0.5), 1.0,
                  "alpha = [0.25, 0.75, 0.5, 0.625, 0.125, 0.5]: exact landings and an unfinished last token"),
                 (torch.randn(3, 5, generator=g, dtype=torch.float64), t(0.2, 0.3, 0.1), 1.0,
                  "alpha = [0.2, 0.3, 0.1]: too little weight to fire any token"),
                 (torch.randn(6, 3, generator=g, dtype=torch.float64), t(0.0, 0.0, 0.6, 0.7, 0.0, 0.9), 1.0,
                  "silent frames with alpha = 0"),
                 (*rand(12, 1, 0.1, 0.9), 1.0, "12 random frames, d = 1"),
                 (*rand(15, 4, 0.1, 0.99), 2.0, "15 random frames, threshold 2"),
                 (*rand(15, 4, 0.05, 0.45), 0.5, "15 random frames, threshold 0.5"),
                 (torch.randn(4, 3, generator=g, dtype=torch.float64), t(0.25, 0.25, 0.375, 0.125), 0.5,
                  "threshold 0.5, alpha = [0.25, 0.25, 0.375, 0.125]: exact landings")]
        hidden, alpha = rand(9, 6, 0.1, 0.9)
        cases.append((hidden.float(), alpha.float(), 1.0, "float32 tensors, 9 frames, d = 6"))
        for hidden, alpha, threshold, what in cases:
            T, d = hidden.shape
            args = (hidden.clone(), alpha.clone()) + ((threshold,) if threshold != 1.0 else ())
            got = c.call(fn, *args)
            hd, ad = hidden.double(), alpha.double()
            n = len(_fire(hd, ad, threshold))
            # Paraformer's batched CIF with the weights measured in thresholds gives the same embeddings.
            expected = cif(hd[None], ad[None] / threshold, torch.tensor([n]))[0] * threshold
            whole = ("the frame that completes a token gives it only the missing part, threshold - (weight so far); "
                     "the rest of its alpha_t belongs to the next token")
            variants = [
                (_fire(hd, ad, threshold, split=False), whole),
                (_fire(hd, ad, threshold, split=False, carry=False), whole),
                (_fire(hd, ad, threshold, carry=False), "the rest of the crossing frame's alpha_t, alpha_t - (the part "
                 "that completed the token), starts the next token: it is not dropped"),
                (_fire(hd, ad, threshold, strict=True), "a token fires as soon as its weight reaches the threshold "
                 "(>=), also when a frame lands on it exactly"),
                (_fire(hd, ad, threshold, fire_last=True), "a last token whose weight stays below the threshold does "
                 "not fire"),
            ]
            got_d = got.detach().double().cpu() if isinstance(got, torch.Tensor) else None
            specific = _matches(variants, got_d, expected, lambda a, b: a is not None and a.shape == b.shape
                                and torch.allclose(a, b, atol=1e-6, rtol=1e-5))
            c.expect(isinstance(got, torch.Tensor) and got.is_floating_point() and tuple(got.shape) == (n, d),
                     f"a float tensor of shape (tokens fired, d) = {(n, d)} for {what} (the weights add up to "
                     f"{float(ad.sum()):.4g}, threshold {threshold})", f"a float tensor of shape {(n, d)}", _got(got),
                     specific or "one row per token that fires, in order; with no firing, an empty (0, d) tensor")
            atol = 1e-5 if hidden.dtype == torch.float32 else 1e-9
            c.close(got_d, expected, f"the fired embeddings (arlib.speech.paraformer.cif) for {what}", specific or hint,
                    atol=atol, rtol=1e-5)
