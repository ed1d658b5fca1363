"""Grading specs of chapter 3: a maximal coupling, K-SEQ's rho and residual, SpecInfer's acceptance, the two-draft
optimum."""

from __future__ import annotations

import numpy as np
import torch

from tools.grading.core import Case, Spec, close, describe, t

SPECTR = "arlib.decoding.spectr"


def _pairs(rng, n, ks=(1, 8)):
    """Random (p, q, k) cases and the edge cases every exercise of the chapter promises."""
    cases = []
    for _ in range(n):
        V = int(rng.integers(2, 40))
        a = float(rng.choice([0.3, 1.0, 3.0]))
        p, q = rng.dirichlet(np.full(V, a)), rng.dirichlet(np.full(V, a))
        cases.append((t(p), t(q), int(rng.integers(*ks)), f"random p and q over {V} tokens"))
    V = int(rng.integers(3, 12))
    p = t(rng.dirichlet(np.ones(V)))
    cases.append((p, p.clone(), int(rng.integers(*ks)), "p = q"))
    half = V // 2
    p, q = np.zeros(V), np.zeros(V)
    p[:half], q[half:] = rng.dirichlet(np.ones(half)), rng.dirichlet(np.ones(V - half))
    cases.append((t(p), t(q), int(rng.integers(*ks)), "disjoint supports"))
    q1 = np.eye(V)[int(rng.integers(V))]
    cases.append((t(rng.dirichlet(np.ones(V))), t(q1), int(rng.integers(*ks)), "a one-hot draft"))
    return cases


def _coupling_cases(rng):
    return [Case((p, q), what) for p, q, _, what in _pairs(rng, 6)]


def _coupling(case):
    p, q = case.args
    return 1 - 0.5 * float((p - q).abs().sum())


def _coupling_compare(got, expected, case):
    p, q = case.args
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (len(p), len(p)):
        return f"expected a ({len(p)}, {len(p)}) tensor, got {describe(got)}"
    g = got.double()
    if not bool(torch.isfinite(g).all()) or float(g.min()) < -1e-12:
        return "negative or non-finite entries"
    for name, sums, want in (("row", g.sum(1), q), ("column", g.sum(0), p)):
        if not torch.allclose(sums, want, atol=1e-9):
            return f"the {name} sums are not {'q' if name == 'row' else 'p'}"
    trace = float(g.trace())
    return None if abs(trace - expected) <= 1e-9 else f"trace {trace:.8g}, expected 1 - TV = {expected:.8g}"


def _rho_cases(rng):
    return [Case((p, q, k), f"{what}, k = {k}") for p, q, k, what in _pairs(rng, 7, (1, 9))]


def _rho(case):
    from arlib.decoding.spectr import kseq_rho

    return float(kseq_rho(*case.args))


def _residual_cases(rng):
    from arlib.decoding.spectr import kseq_rho

    cases = []
    for p, q, k, what in _pairs(rng, 7, (1, 7)):
        star = float(kseq_rho(p, q, k))
        rho = star if rng.uniform() < 0.6 else float(rng.uniform(star, k))
        cases.append(Case((p, q, k, rho), f"{what}, k = {k}, rho = {rho:.5g}"))
    return cases


def _residual(case):
    from arlib.decoding.spectr import kseq_residual

    return kseq_residual(*case.args)


def _rrs_cases(rng):
    return [Case((p, q, k), f"{what}, k = {k}") for p, q, k, what in _pairs(rng, 7, (1, 9))]


def _rrs(case):
    from arlib.decoding.spectr import rrs_acceptance

    return float(rrs_acceptance(*case.args))


def _two_draft_cases(rng):
    return [Case((p, q), what) for p, q, _, what in _pairs(rng, 7)]


def _two_draft(case):
    from arlib.decoding.spectr import optimal_acceptance

    return float(optimal_acceptance(*case.args, 2))


SPECS = [
    Spec("3.1", ("coupling_plan",), (f"{SPECTR}.optimal_acceptance_lp",), _coupling_cases, _coupling,
         _coupling_compare),
    Spec("3.2", ("smallest_rho",), (f"{SPECTR}.kseq_rho", f"{SPECTR}.kseq_rho_exact"), _rho_cases, _rho,
         close(0.0, 1e-7)),
    Spec("3.3", ("kseq_residual_dist",), (f"{SPECTR}.kseq_residual",), _residual_cases, _residual, close(1e-6)),
    Spec("3.4", ("rrs_acceptance_exact",), (f"{SPECTR}.rrs_acceptance",), _rrs_cases, _rrs, close(1e-7, 1e-6)),
    Spec("3.5", ("two_draft_optimum",), (f"{SPECTR}.optimal_acceptance", f"{SPECTR}.optimal_acceptance_lp",
                                          f"{SPECTR}.acceptance_upper_bound",
                                          "arlib.decoding.optimal_verify.optimal_verifier"),
         _two_draft_cases, _two_draft, close(1e-7, 1e-6)),
]
