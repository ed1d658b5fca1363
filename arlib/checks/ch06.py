"""Checks for chapter 6 (sparse autoencoders: the TopK activation, the mean max cosine similarity, one bias
adaptation update, and finding the latent that detects a pattern)."""

from __future__ import annotations

import math

import torch

from arlib.checks.core import Check, as_integer
from arlib.interp.sae import firing_f1, matching_latent, mmcs, topk_activation
from arlib.interp.sae_train import bias_adaptation_update


def _got(got):
    return got if isinstance(got, torch.Tensor) else type(got).__name__


def _number(got) -> float | None:
    """A Python float for a number or a one-element tensor; None for anything else."""
    if isinstance(got, bool):
        return None
    if isinstance(got, (int, float)):
        return float(got)
    if isinstance(got, torch.Tensor) and got.numel() == 1 and (got.is_floating_point() or not got.dtype.is_complex):
        return float(got.item())
    try:
        import numpy as np

        if isinstance(got, np.floating | np.integer):
            return float(got)
    except ImportError:  # pragma: no cover
        pass
    return None


# --- 6.1 -------------------------------------------------------------------------------------------


def topk_latents(fn) -> None:
    """Exercise 6.1: ``fn(pre, k) -> f``: keep the k largest pre-activations of each row, then a ReLU."""
    with Check("6.1", "the TopK activation") as c:
        hint = ("per row (dim=-1): values, indices = pre.topk(k, dim=-1); start from zeros of pre's shape and "
                "scatter ReLU(values) back at the indices; every other entry stays 0")
        g = torch.Generator().manual_seed(61)
        cases = []
        for N, M, k, dtype in [(8, 20, 3, torch.float32), (30, 12, 1, torch.float64), (5, 7, 7, torch.float32),
                               (12, 40, 5, torch.float64), (1, 9, 4, torch.float32)]:
            cases.append((torch.randn(N, M, generator=g, dtype=torch.float64).to(dtype), k,
                          f"{N} rows of {M} random pre-activations ({str(dtype)[6:]}), k = {k}"))
        mostly_negative = torch.randn(10, 15, generator=g, dtype=torch.float64) - 1.5  # rows with < k positives
        cases.append((mostly_negative, 6, "mostly negative rows, fewer positive entries than k = 6 (the ReLU "
                      "zeroes the negative ones among the top k)"))
        big_negative = torch.rand(6, 10, generator=g, dtype=torch.float64)
        big_negative[:, 0] = -5.0  # the largest magnitude, but the smallest value
        cases.append((big_negative, 2, "rows whose entry of largest magnitude is a large negative number"))
        cases.append((torch.randn(3, 4, 25, generator=g), 4, "a batch of shape (3, 4, 25): the latents are the last "
                      "dimension"))
        for pre, k, what in cases:
            got = c.call(fn, pre.clone(), k)
            expected = topk_activation(pre, k)
            c.expect(isinstance(got, torch.Tensor) and got.shape == pre.shape, f"f of the shape of pre for {what}",
                     f"tensor of shape {tuple(pre.shape)}", _got(got),
                     "return a tensor shaped like pre, with zeros where a latent is not kept (not just the k values)")
            nonzero = (got != 0).sum(-1)
            c.expect(bool((nonzero <= k).all()), f"at most k = {k} non-zero latents in every row for {what}",
                     f"<= {k}", int(nonzero.max()), "keep only the k largest entries of each row")
            specific = None
            if bool((got < 0).any()):
                specific = "some kept values are negative: apply the ReLU to the k values you keep"
            elif torch.equal(got.cpu(), _topk_by_magnitude(pre, k)) and not torch.equal(expected, got.cpu()):
                specific = "these are the k entries of largest magnitude |pre|: TopK keeps the k largest values"
            c.close(got.detach().cpu(), expected, f"f = ReLU of the k largest pre-activations per row for {what}",
                    specific or hint, atol=1e-6, rtol=1e-6)


def _topk_by_magnitude(pre, k):
    idx = pre.abs().topk(k, dim=-1).indices
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(pre.gather(-1, idx)))


# --- 6.2 -------------------------------------------------------------------------------------------


def mean_max_cosine(fn) -> None:
    """Exercise 6.2: ``fn(true_features, learned) -> float``, the mean over true features of their best cosine."""
    with Check("6.2", "mean max cosine similarity") as c:
        hint = ("normalize the rows of both matrices to unit length, take all cosines true @ learned.T (F, M), the "
                "max over the learned directions (dim=1), then the mean over the F true features")
        g = torch.Generator().manual_seed(62)
        cases = []
        truth = torch.nn.functional.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
        noisy = truth + 0.3 * torch.randn(12, 8, generator=g, dtype=torch.float64)
        lengths = 0.2 + 3 * torch.rand(12, 1, generator=g, dtype=torch.float64)
        cases.append((truth, noisy * lengths, "noisy copies of the 12 true directions, of lengths 0.2 to 3.2"))
        extra = torch.cat([noisy[:6], torch.randn(30, 8, generator=g, dtype=torch.float64)]) * 2.0
        cases.append((truth, extra, "36 learned directions (6 noisy copies of true ones, 30 random), length 2"))
        few = noisy[:3] * 0.5
        cases.append((truth, few, "only 3 learned directions for 12 true ones"))
        flipped = -truth[:5] + 0.05 * torch.randn(5, 8, generator=g, dtype=torch.float64)
        cases.append((truth[:5], torch.cat([flipped, noisy[5:8]]), "learned directions pointing opposite to the true "
                      "ones (a cosine of -1 is no match)"))
        cases.append((truth.float(), (noisy * lengths).float(), "float32 inputs"))
        t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
        cases.append((t, torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, -2.0]], dtype=torch.float64),
                      "true e1, e2; learned 3 e1, e2 + e3, -2 e3 (expected (1 + 1/sqrt(2)) / 2)"))
        for true_features, learned, what in cases:
            got = _number(c.call(fn, true_features.clone(), learned.clone()))
            expected = mmcs(true_features, learned)
            c.expect(got is not None, f"a number for {what}", "a float", got, "return one number, e.g. float(...)")
            mistakes = [
                (_mmcs_variant(true_features, learned, normalize=False), "divide by the lengths: a dot product is "
                 "a cosine only between unit vectors (F.normalize the rows of both matrices)"),
                (_mmcs_variant(true_features, learned, transpose=True), "take, for each TRUE feature, the max over "
                 "the learned directions (then the mean over true features), not the other way round"),
                (_mmcs_variant(true_features, learned, absolute=True), "keep the sign: a learned direction opposite "
                 "to a true feature does not recover it (no abs)"),
            ]
            specific = next((h for value, h in mistakes if abs(got - value) < 1e-5 and abs(value - expected) > 1e-4),
                            None)
            c.expect(abs(got - expected) < 1e-5, f"the mean max cosine similarity for {what}", round(expected, 6),
                     got, specific or hint)


def _mmcs_variant(a, b, normalize=True, transpose=False, absolute=False):
    a, b = a.double(), b.double()
    if normalize:
        a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    cos = a @ b.T
    cos = cos.abs() if absolute else cos
    return float((cos.max(0).values if transpose else cos.max(1).values).mean())


# --- 6.3 -------------------------------------------------------------------------------------------


def _update_variant(pre, bias, targets, groups, gm, gp, eps, clip=True, group_mean="live", ceiling=True,
                    own_r=False):
    """The published update (Chen et al. 2025, Algorithm 1) and the mistakes the check names."""
    pre, b = pre.double(), bias.double()
    p_hat, r_max = (pre > 0).double().mean(0), pre.max(0).values
    live = p_hat > 0 if group_mean == "live" else torch.ones_like(p_hat, dtype=torch.bool)
    n = int(groups.max()) + 1
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, groups, torch.where(live, r_max, torch.zeros_like(r_max)))
    mean = total / torch.zeros(n, dtype=torch.float64).index_add_(0, groups, live.double()).clamp_min(1)
    up = gp * (r_max if own_r else mean[groups])
    lowered, raised = b - gm * r_max, b + up
    if clip:
        lowered, raised = lowered.clamp_min(-1.0), raised.clamp_max(0.0)
    low_cut = eps if ceiling else targets.double()
    return torch.where(p_hat > targets, lowered, torch.where(p_hat < low_cut, raised, b))


def _ba_case(g, N, M, n_groups, dtype):
    """A buffer of pre-activations whose neurons include some above target, some in band and some dead, with
    at least one live neuron in every group."""
    z = torch.randn(N, M, generator=g, dtype=torch.float64) * (0.1 + 0.4 * torch.rand(M, generator=g,
                                                                                     dtype=torch.float64))
    bias = -torch.rand(M, generator=g, dtype=torch.float64) * 0.9
    groups = torch.arange(M) % n_groups
    levels = torch.exp(torch.linspace(math.log(0.2), math.log(0.01), n_groups, dtype=torch.float64))
    targets = levels[groups]
    dead = torch.arange(M)[torch.arange(M) >= n_groups][::3]  # never the first member of a group
    bias[dead] = -(z[:, dead].max(0).values + 0.05)
    bias[:n_groups] = torch.maximum(bias[:n_groups], -z[:, :n_groups].quantile(0.5, dim=0))  # live, dense
    return (z + bias).to(dtype), bias.to(dtype), targets, groups


def bias_adaptation(fn) -> None:
    """Exercise 6.3: ``fn(pre, bias, targets, groups, gamma_minus, gamma_plus, eps) -> new bias``: one update of
    (group) bias adaptation as Chen et al. 2025 publish it."""
    with Check("6.3", "one bias adaptation update") as c:
        hint = ("per neuron, from the buffer: p = fraction of rows with pre > 0, r = max of pre over rows; "
                "p > target: bias - gamma_minus * r, at least -1; p < eps: bias + gamma_plus * (mean r over the live "
                "neurons, p > 0, of its group), at most 0; otherwise unchanged")
        g = torch.Generator().manual_seed(63)
        cases = []
        for N, M, n_groups, dtype in [(400, 12, 3, torch.float64), (1000, 20, 4, torch.float32),
                                      (300, 8, 1, torch.float64), (800, 30, 5, torch.float64)]:
            pre, bias, targets, groups = _ba_case(g, N, M, n_groups, dtype)
            for gm, gp in ((0.05, 0.05), (2.0, 0.5)):  # the large step reaches the clip at -1
                cases.append((pre, bias, targets, groups, gm, gp, 1e-3,
                              f"{N} inputs, {M} neurons in {n_groups} group(s), gamma_minus {gm}, gamma_plus {gp} "
                              f"({str(dtype)[6:]})"))
        mistakes = [
            (dict(clip=False), "clip: a lowered bias stays at or above -1 and a raised one at or below 0"),
            (dict(own_r=True), "a dead neuron's own largest pre-activation is not positive: raise it by gamma_plus "
                               "times the mean r of its group's live neurons"),
            (dict(group_mean="all"), "average r over the group's live neurons only (those with p > 0), not over "
                                     "all of them"),
            (dict(ceiling=False), "the targets are ceilings: a neuron that fires, but less often than its target, "
                                  "keeps its bias; only nearly dead ones (p < eps) are raised"),
        ]
        for pre, bias, targets, groups, gm, gp, eps, what in cases:
            got = c.call(fn, pre.clone(), bias.clone(), targets.clone(), groups.clone(), gm, gp, eps)
            M = pre.shape[1]
            c.expect(isinstance(got, torch.Tensor) and got.shape == (M,), f"new biases of shape ({M},) for {what}",
                     f"tensor of shape ({M},)", _got(got), "one bias per neuron (column of pre)")
            expected = bias_adaptation_update(bias.double(), pre.double(), targets, groups, gm, gp, eps)
            got_d = got.detach().double().cpu()
            specific = next((h for change, h in mistakes if torch.allclose(
                got_d, v := _update_variant(pre, bias, targets, groups, gm, gp, eps, **change), atol=1e-6)
                and not torch.allclose(v, expected, atol=1e-6)), None)
            atol = 1e-5 if pre.dtype == torch.float32 else 1e-9
            c.close(got_d, expected, f"the new biases for {what}", specific or hint, atol=atol, rtol=1e-5)


# --- 6.4 -------------------------------------------------------------------------------------------


def _sparse_latents(g, N, M, density):
    """Non-negative latents (N, M), each column firing on about density[j] of the rows."""
    fires = torch.rand(N, M, generator=g) < density
    return fires * torch.rand(N, M, generator=g).add(0.1)


def find_latent(fn) -> None:
    """Exercise 6.4: ``fn(f, mask) -> int``: the latent whose firing has the highest F1 score against the pattern."""
    with Check("6.4", "find the latent that detects a pattern") as c:
        hint = ("fires = f > 0; per latent: tp = (fires & mask).sum(0); F1 = 2 tp / (fires.sum(0) + mask.sum()); "
                "return the index of the largest F1 (the first one if several tie)")
        g = torch.Generator().manual_seed(64)
        cases = []
        for N, M in [(400, 30), (1000, 64), (150, 12)]:
            f = _sparse_latents(g, N, M, 0.02 + 0.2 * torch.rand(M, generator=g))
            mask = torch.rand(N, generator=g) < 0.08
            j = int(torch.randint(M, (1,), generator=g))
            f[:, j] = 0
            hits = mask & (torch.rand(N, generator=g) < 0.85)  # fires on most of the pattern ...
            f[hits, j] = 1.0
            f[torch.rand(N, generator=g) < 0.01, j] = 0.5  # ... and on a few other rows
            cases.append((f, mask, f"{N} inputs, {M} latents, one of which fires on 85% of the pattern"))
        # decoys: a latent that fires everywhere (recall 1), one that fires on 2 pattern rows only (precision 1),
        # one with the largest mean activation on the pattern, and a latent that never fires
        N, M = 500, 8
        f = _sparse_latents(g, N, M, torch.full((M,), 0.05))
        mask = torch.zeros(N, dtype=torch.bool)
        mask[::10] = True  # 50 rows
        f[:, 0] = 0.2  # dense
        f[:, 1] = 0.0
        f[torch.nonzero(mask)[:2, 0], 1] = 1.0  # precise but rare
        f[:, 2] = 0.0  # never fires
        f[:, 5] = 0.0
        f[mask, 5] = 0.3 * (torch.rand(int(mask.sum()), generator=g) < 0.8)  # the detector
        f[torch.nonzero(~mask)[:5, 0], 5] = 0.3
        f[:, 6] = 0.0
        f[torch.nonzero(mask)[:20, 0], 6] = 50.0  # huge values on part of the pattern
        cases.append((f, mask, "decoys: latent 0 fires everywhere, 1 on two pattern rows only, 2 never, 6 on 20 "
                      "pattern rows with huge values; 5 fires on about 80% of the pattern and 5 other rows"))
        cases.append((f.double(), mask, "the same in float64"))
        cases.append((f, mask.long(), "the same with the pattern as a 0/1 integer tensor"))
        for f, mask, what in cases:
            got = as_integer(c.call(fn, f.clone(), mask.clone()))
            c.expect(got is not None, f"an integer index for {what}", "an int", got,
                     "return the index of the best latent, e.g. int(scores.argmax())")
            expected, best = matching_latent(f, mask)
            scores = firing_f1(f, mask)
            fires, m = (f > 0), mask.bool()
            recall = (fires & m[:, None]).sum(0) / m.sum()
            precision = (fires & m[:, None]).sum(0) / fires.sum(0).clamp_min(1)
            mistakes = [
                (int(recall.argmax()), "this latent fires on the whole pattern, but also almost everywhere else: "
                 "recall alone rewards latents that always fire; use F1, which also needs precision"),
                (int(precision.argmax()), "this latent is never wrong when it fires, but it fires on a tiny part of "
                 "the pattern: precision alone rewards rare latents; use F1"),
                (int(f[m].mean(0).argmax()), "the largest mean activation on the pattern is not the best detector: "
                 "score whether the latent fires (f > 0), not how strongly"),
            ]
            specific = next((h for idx, h in mistakes if got == idx and idx != expected), None)
            ok = got is not None and 0 <= got < f.shape[1] and abs(float(scores[got]) - best) < 1e-9
            c.expect(ok, f"the latent with the best F1 score ({expected}, F1 {best:.3f}) for {what}", expected,
                     got if got is None or not 0 <= got < f.shape[1] else f"{got} (F1 {float(scores[got]):.3f})",
                     specific or hint)
