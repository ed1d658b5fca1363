"""Grading specs of chapter 2: expected tokens, the residual, the best gamma, prompt lookup, accepted prefix."""

from __future__ import annotations

import numpy as np
import torch

from tools.grading.core import Case, Spec, close, same_ids, same_int, t

SPECULATIVE = "arlib.decoding.speculative"


def _tokens_cases(rng):
    cases = [Case((1.0, int(rng.integers(0, 100))), "alpha = 1"), Case((0.0, int(rng.integers(1, 100))), "alpha = 0"),
             Case((float(rng.uniform(0, 1)), 0), "gamma = 0")]
    cases += [Case((float(a), int(g)), f"alpha = {a:.4f}, gamma = {g}")
              for a, g in zip(rng.uniform(0, 1, 6), rng.integers(1, 200, 6))]
    return cases


def _expected_tokens(case):
    from arlib.decoding.speculative import expected_tokens

    return float(expected_tokens(*case.args))


def _residual_cases(rng):
    cases = []
    for k in range(6):
        V = int(rng.integers(2, 90))
        p, q = rng.dirichlet(np.ones(V) * rng.uniform(0.2, 3)), rng.dirichlet(np.ones(V) * rng.uniform(0.2, 3))
        if k == 1:
            q = np.eye(V)[int(rng.integers(V))]
        dtype = torch.float32 if k == 2 else torch.float64
        cases.append(Case((t(p, dtype), t(q, dtype)), f"{V} tokens" + (", one-hot q" if k == 1 else "")))
    p = t(rng.dirichlet(np.ones(7)))
    cases.append(Case((p, p.clone()), "p == q"))
    return cases


def _residual(case):
    from arlib.decoding.speculative import residual

    return residual(case.args[0].double(), case.args[1].double())


def _residual_compare(got, expected, case):
    return close(1e-5 if case.args[0].dtype == torch.float32 else 1e-9)(got, expected, case)


def _gamma_cases(rng):
    cases = []
    for k in range(10):
        alpha, c = float(rng.uniform(0, 0.995)), float(np.exp(rng.uniform(np.log(0.003), np.log(1.0))))
        if k < 6:
            cases.append(Case((alpha, c), f"alpha = {alpha:.4f}, c = {c:.4f}"))
        else:
            m = int(rng.integers(1, 80))
            cases.append(Case((alpha, c), f"alpha = {alpha:.4f}, c = {c:.4f}, max_gamma = {m}",
                              kwargs={"max_gamma": m}))
    return cases


def _best_gamma(case):
    from arlib.decoding.speculative import optimal_gamma

    return optimal_gamma(*case.args, case.kwargs.get("max_gamma", 32))


def _lookup_cases(rng):
    cases = [Case(([int(rng.integers(9))], 1, 3), "a single token")]
    for _ in range(25):
        length, vocab = int(rng.integers(2, 70)), int(rng.integers(2, 8))
        n, gamma = int(rng.integers(1, 4)), int(rng.integers(0, 17))
        cases.append(Case(([int(x) for x in rng.integers(0, vocab, length)], n, gamma),
                          f"{length} tokens over {vocab} symbols, n = {n}, gamma = {gamma}"))
    return cases


def _lookup(case):
    from arlib.decoding.drafters import NGramDrafter

    tokens, n, gamma = case.args
    return NGramDrafter(max_n=n, min_n=n).propose(torch.tensor([tokens]), gamma).tokens[0].tolist()


def _prefix_cases(rng):
    cases = []
    for k in range(20):
        g = int(rng.integers(1, 10))
        p, q, u = rng.uniform(0, 1, g), rng.uniform(1e-3, 1, g), rng.uniform(0, 1, g) ** 3
        if k == 0:
            p[int(rng.integers(g))], u[:] = 0.0, 0.0
        cases.append(Case((t(p), t(q), t(u)), f"gamma = {g}" + (", p = 0 with u = 0" if k == 0 else "")))
    return cases


def _accepted(case):
    p, q, u = case.args
    return int((u * q < p).long().cumprod(0).sum())


SPECS = [
    Spec("2.1", ("expected_tokens_by_sum",), (f"{SPECULATIVE}.expected_tokens",), _tokens_cases, _expected_tokens,
         close(0.0, 1e-6)),
    Spec("2.2", ("residual_distribution",), (f"{SPECULATIVE}.residual",), _residual_cases, _residual,
         _residual_compare),
    Spec("2.3", ("best_gamma",), (f"{SPECULATIVE}.optimal_gamma", f"{SPECULATIVE}.speedup"), _gamma_cases, _best_gamma,
         same_int),
    Spec("2.4", ("lookup_draft",), ("arlib.decoding.drafters.NGramDrafter.propose",), _lookup_cases, _lookup, same_ids),
    Spec("2.5", ("accepted_count",), (f"{SPECULATIVE}.verify",), _prefix_cases, _accepted, same_int),
]
