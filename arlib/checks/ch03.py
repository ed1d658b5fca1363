"""Checks for chapter 3 (multi-draft speculative sampling: couplings, K-SEQ and recursive rejection sampling).

The book's letters: p is the target, q the draft (SpecTr's paper swaps them).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlib.checks.core import Check, as_number
from arlib.decoding.spectr import (
    kseq_residual,
    kseq_rho,
    optimal_acceptance_lp,
    recursive_rejection_select,
    rrs_acceptance,
)


def _dirichlet(seed: int, V: int, concentration: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (target p, draft q) pair of float64 distributions over V tokens."""
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.full(V, concentration), size=2)
    return torch.from_numpy(p), torch.from_numpy(q)


def _t(*x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _edge_pairs() -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """The special pairs every check of this chapter tries: p = q, disjoint supports, a one-hot draft, zeros."""
    same = _t(0.1, 0.2, 0.3, 0.4)
    return [
        (same, same.clone(), "p = q"),
        (_t(0.5, 0.5, 0.0, 0.0), _t(0.0, 0.0, 0.3, 0.7), "disjoint supports"),
        (_t(0.2, 0.5, 0.1, 0.2), _t(0.0, 1.0, 0.0, 0.0), "a one-hot draft"),
        (_t(0.0, 0.6, 0.4, 0.0, 0.0), _t(0.3, 0.3, 0.0, 0.4, 0.0), "zeros in p and in q"),
    ]


def _got(got) -> str:
    return got if isinstance(got, torch.Tensor) else type(got).__name__


# --- 3.1 -------------------------------------------------------------------------------------------


def maximal_coupling(fn) -> None:
    """Exercise 3.1: ``fn(p, q) -> (V, V)``, a coupling plan[x, y] = P(draft = x, target = y) with the largest trace."""
    with Check("3.1", "a maximal coupling") as c:
        hint = ("put min(p, q) on the diagonal; the leftovers q - min(p, q) (for the rows) and p - min(p, q) (for "
                "the columns) both have mass TV = 1 - sum min(p, q) and sit on different tokens, so couple them "
                "off the diagonal, e.g. by their outer product divided by TV (nothing is left when TV = 0)")
        cases = [(*_dirichlet(31, V, a), f"random p and q over {V} tokens", lp)
                 for V, a, lp in [(3, 1.0, True), (6, 1.0, True), (6, 0.3, False), (20, 1.0, False), (20, 5.0, False)]]
        cases += [(p, q, what, what == "a one-hot draft") for p, q, what in _edge_pairs()]
        p32, q32 = _dirichlet(32, 8)
        cases.append((p32.float(), q32.float(), "float32 tensors", False))
        for p, q, what, lp in cases:
            V = p.shape[0]
            got = c.call(fn, p.clone(), q.clone())
            c.expect(isinstance(got, torch.Tensor) and tuple(got.shape) == (V, V), f"a (V, V) plan for {what}",
                     f"tensor of shape {(V, V)}", _got(got),
                     "plan[x, y] = P(draft = x, target = y): one row per draft token, one column per target token")
            got = got.double()
            pd, qd = p.double(), q.double()
            both = torch.minimum(pd, qd)
            tv = 1 - both.sum().item()
            atol = 1e-5 if p.dtype == torch.float32 else 1e-6
            c.expect(bool(torch.isfinite(got).all()), f"finite probabilities for {what}", "finite values", got,
                     "when p = q the leftovers are all zero and TV = 0: dividing by TV gives 0 / 0; skip that term"
                     if tv < 1e-12 else hint)
            c.expect(got.min().item() >= -1e-9, f"a plan with no negative entry for {what}", ">= 0",
                     got.min().item(), "every entry of a plan is a probability; the leftovers q - min(p, q) and "
                     "p - min(p, q) are >= 0, but p - q or q - p are not")
            rows, cols = got.sum(1), got.sum(0)
            if torch.allclose(rows, pd, atol=atol) and torch.allclose(cols, qd, atol=atol) and tv > 1e-3:
                specific = ("rows and columns are swapped: the row index is the draft token, so summing a row "
                            "(over the target) must give q(x), summing a column p(y)")
            elif torch.allclose(got, torch.diag(both), atol=atol) and tv > 1e-3:
                specific = ("the diagonal min(p, q) alone has mass 1 - TV: the leftover masses q - min(p, q) and "
                            "p - min(p, q) must be placed off the diagonal too")
            elif tv > 1e-3 and torch.allclose(got, torch.diag(both) + torch.outer(qd - both, pd - both), atol=atol):
                specific = "the outer product of the two leftovers has mass TV * TV, not TV: divide it by TV"
            else:
                specific = None
            c.close(rows, qd, f"the row sums (the draft's marginal q) for {what}", specific or hint, atol=atol, rtol=0)
            c.close(cols, pd, f"the column sums (the target's marginal p) for {what}", specific or hint, atol=atol,
                    rtol=0)
            trace = got.trace().item()
            if abs(trace - (pd * qd).sum().item()) < 1e-9 and tv > 1e-3 and (pd * qd).sum() < 1 - tv - 1e-6:
                specific = ("the independent coupling outer(q, p) has the right marginals, but draft and target "
                            "agree only with probability sum p(x) q(x); put min(p, q) on the diagonal")
            c.expect(abs(trace - (1 - tv)) <= atol, f"P(draft = target) = trace(plan) = 1 - TV(p, q) for {what}",
                     1 - tv, trace, specific or hint)
            if lp:
                best = optimal_acceptance_lp(pd, qd, 1)
                c.expect(abs(trace - best) <= atol, f"trace(plan) = the best P(draft = target) over all couplings, "
                         f"solved as a linear program (arlib.decoding.spectr.optimal_acceptance_lp), for {what}",
                         best, trace,
                         hint)


# --- 3.2 -------------------------------------------------------------------------------------------


def _gap(p: torch.Tensor, q: torch.Tensor, k: int, rho: float) -> float:
    """rho beta(rho) - 1 + (1 - beta(rho))^k: >= 0 exactly when rho is a valid K-SEQ rho."""
    beta = torch.minimum(q, p / rho).sum().item()
    return rho * beta - 1 + (1 - beta) ** k


def kseq_rho_search(fn) -> None:
    """Exercise 3.2: ``fn(p, q, k) -> float``, the smallest rho in [1, k] with 1 - (1 - beta)^k <= rho beta."""
    with Check("3.2", "K-SEQ's rho") as c:
        hint = ("g(rho) = rho beta(rho) - 1 + (1 - beta(rho))^k increases with rho and g(k) >= 0: return 1 if "
                "g(1) >= 0; otherwise bisect on [1, k], keeping g(lo) < 0 <= g(hi) (when g(mid) >= 0, rho* <= mid: "
                "move hi), for about 60 steps, and return hi")
        cases = [(*_dirichlet(33 + i, V, a), k, f"random p and q over {V} tokens, k = {k}")
                 for i, (V, a, k) in enumerate([(6, 1.0, 1), (5, 1.0, 2), (8, 1.0, 3), (20, 1.0, 4), (10, 0.3, 5),
                                                (30, 3.0, 6), (50, 1.0, 8), (4, 1.0, 7)])]
        cases += [(p, q, k, f"{what}, k = {k}") for (p, q, what), k in zip(_edge_pairs(), (4, 3, 3, 5), strict=True)]
        p32, q32 = _dirichlet(34, 12)
        cases.append((p32.float(), q32.float(), 4, "float32 tensors, k = 4"))
        for p, q, k, what in cases:
            got = c.call(fn, p.clone(), q.clone(), k)
            value = as_number(got)
            c.expect(value is not None and math.isfinite(value), f"a single number for {what}", "a float",
                     repr(got), "return rho as a Python float")
            pd, qd = p.double(), q.double()
            expected = float(kseq_rho(pd, qd, k))
            rtol = 1e-5 if p.dtype == torch.float32 else 1e-6
            c.expect(1 - rtol <= value <= k * (1 + rtol), f"rho in [1, k] for {what}", f"a number in [1, {k}]", value,
                     "rho = 1 is the least K-SEQ can use, and rho = k always satisfies the condition")
            bisect = "if you bisect, check which end moves: when the condition holds at mid, rho* <= mid, so hi = mid"
            low = ("rho = 1 is too small here: with it the accepted mass min(q, p/rho) (1 - (1 - beta)^k) / beta "
                   "exceeds p at some token and the residual goes negative; " + bisect)
            gap = _gap(pd, qd, k, value)
            c.expect(gap >= -rtol, f"a valid rho for {what}: 1 - (1 - beta(rho))^k <= rho beta(rho), i.e. "
                     "rho beta - 1 + (1 - beta)^k >= 0", ">= 0", gap, low if value < 1 + 1e-6 else hint)
            specific = hint
            if abs(value - k) < 1e-6 * k and expected < k * (1 - 1e-3):
                accept_k = 1 - (1 - torch.minimum(qd, pd / k).sum().item()) ** k
                accept_star = 1 - (1 - torch.minimum(qd, pd / expected).sum().item()) ** k
                specific = (f"rho = k is always valid but wasteful: it accepts a draft with probability "
                            f"{accept_k:.4f} instead of {accept_star:.4f}; find the smallest valid rho ({bisect})")
            c.expect(abs(value - expected) <= rtol * expected, f"the smallest valid rho for {what}", expected, value,
                     specific)
        p, q = _t(0.6, 0.4, 0.0), _t(1.0, 0.0, 0.0)  # one-hot draft: (1 - 0.6 / rho)^k = 0.4 in closed form
        got = as_number(c.call(fn, p.clone(), q.clone(), 3))
        closed = 0.6 / (1 - 0.4 ** (1 / 3))
        c.expect(got is not None and abs(got - closed) <= 1e-6 * closed,
                 "the closed form for a one-hot draft on a token of target probability 0.6, k = 3: beta = 0.6 / rho, "
                 "so rho* solves (1 - 0.6 / rho)^3 = 0.4", closed, got, hint)


# --- 3.3 -------------------------------------------------------------------------------------------


def kseq_residual_law(fn) -> None:
    """Exercise 3.3: ``fn(p, q, k, rho) -> (V,)``, the distribution K-SEQ samples after k rejections."""
    with Check("3.3", "K-SEQ's residual") as c:
        hint = ("with a(x) = min(q(x), p(x)/rho) and beta = sum a, the output is an accepted draft x with "
                "probability a(x) (1 - (1 - beta)^k) / beta; the residual is what p still lacks, "
                "[p - a (1 - (1 - beta)^k) / beta] / (1 - beta)^k, and p itself when beta = 1")
        cases = []
        for i, (V, a, k) in enumerate([(6, 1.0, 2), (8, 1.0, 3), (20, 1.0, 5), (12, 0.4, 4), (30, 4.0, 3),
                                       (5, 1.0, 1)]):
            p, q = _dirichlet(35 + i, V, a)
            star = float(kseq_rho(p, q, k))
            cases.append((p, q, k, star, f"random p and q over {V} tokens, k = {k}, rho = rho*"))
            if k > 1:
                cases.append((p, q, k, float(k), f"random p and q over {V} tokens, k = {k}, rho = k"))
        p, q = _dirichlet(41, 10)
        cases.append((p, q, 4, (float(kseq_rho(p, q, 4)) + 4) / 2, "random p and q, k = 4, rho between rho* and k"))
        for p, q, what in _edge_pairs():
            for k in (1, 3):
                cases.append((p, q, k, float(kseq_rho(p, q, k)), f"{what}, k = {k}, rho = rho*"))
        same = _t(0.1, 0.2, 0.3, 0.4)
        cases.append((same, same, 3, 2.0, "p = q, k = 3, rho = 2 (beta = 1/2)"))
        p32, q32 = _dirichlet(42, 7)
        cases.append((p32.float(), q32.float(), 3, float(kseq_rho(p32, q32, 3)), "float32 tensors, k = 3"))
        for p, q, k, rho, what in cases:
            V = p.shape[0]
            got = c.call(fn, p.clone(), q.clone(), k, rho)
            c.expect(isinstance(got, torch.Tensor) and tuple(got.shape) == (V,), f"a tensor of the shape of p for "
                     f"{what}", f"tensor of shape {(V,)}", _got(got), "return a 1-D tensor like p")
            got = got.double()
            pd, qd = p.double(), q.double()
            accept = torch.minimum(qd, pd / rho)
            beta = accept.sum().item()
            passed = sum((1 - beta) ** i for i in range(k))  # (1 - (1 - beta)^k) / beta
            rejected = (1 - beta) ** k
            atol = 1e-5 if p.dtype == torch.float32 else 1e-6
            if beta > 1 - 1e-9:
                nan = ("beta = 1 here (p = q and rho = 1: every draft passes and the residual is never used): "
                       "return p instead of dividing 0 by 0")
            elif beta < 1e-12:
                nan = ("beta = 0 here (no draft can pass, so the residual is p): (1 - (1 - beta)^k) / beta is 0 / 0 "
                       "at beta = 0, but it equals 1 + (1 - beta) + ... + (1 - beta)^(k - 1)")
            else:
                nan = hint
            c.expect(bool(torch.isfinite(got).all()), f"finite values for {what}", "finite values", got, nan)
            guesses = []
            lev = (pd - qd).clamp_min(0)
            if lev.sum() > 0:
                guesses.append((lev / lev.sum(), "that is chapter 2's residual norm(max(0, p - q)); it is right only "
                                "for k = 1: K-SEQ accepts min(q, p/rho) per draft and tries k drafts"))
            numerator = pd - accept * passed
            guesses.append((numerator, "divide by (1 - beta)^k, the probability that all k drafts are rejected"))
            if 1e-12 < beta < 1 - 1e-9:
                no_beta = pd - accept * (1 - rejected)
                guesses += [(no_beta / rejected, "the chance that some draft is accepted as x is min(q(x), p(x)/rho) "
                             "times 1 + (1 - beta) + ... + (1 - beta)^(k - 1) = (1 - (1 - beta)^k) / beta: did you "
                             "forget to divide by beta?"),
                            (no_beta.clamp_min(0) / no_beta.clamp_min(0).sum(), "the chance that some draft is "
                             "accepted as x is min(q(x), p(x)/rho) (1 - (1 - beta)^k) / beta: did you forget to "
                             "divide by beta?")]
            expected = kseq_residual(pd, qd, k, rho)
            specific = next((h for guess, h in guesses if torch.allclose(got, guess, atol=1e-9)
                             and not torch.allclose(guess, expected, atol=1e-6)), None)
            c.expect(got.min().item() >= -atol / 10, f"non-negative probabilities for {what}", ">= 0", got.min().item(),
                     specific or hint)
            c.expect(abs(got.sum().item() - 1) <= atol, f"the residual sums to 1 for {what}", 1.0, got.sum().item(),
                     specific or hint)
            law = accept * passed + rejected * got
            c.close(law, pd, f"P(output = x) = min(q, p/rho)(x) (1 - (1 - beta)^k) / beta + (1 - beta)^k "
                    f"residual(x) = p(x) for {what}", specific or hint, atol=atol, rtol=0)
            c.close(got, expected, f"the residual for {what}", specific or hint, atol=atol, rtol=0)


# --- 3.4 -------------------------------------------------------------------------------------------


def _simulated_rrs(p: torch.Tensor, q: torch.Tensor, k: int, n: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of SpecInfer's acceptance over n simulated verifications of k drafts."""
    g = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(q, n * k, replacement=True, generator=g).view(n, k)  # i.i.d. from q
    first, _ = recursive_rejection_select(p.expand(n, -1), q.expand(n, -1), drafts, generator=g)
    accepted = (first >= 0).double()
    return accepted.mean().item(), accepted.std().item() / math.sqrt(n)


def _rrs_variants(p: torch.Tensor, q: torch.Tensor, k: int) -> tuple[float, float]:
    """Two typical mistakes: the same beta for every try, and residuals that are not renormalized."""
    beta = torch.minimum(p, q).sum().item()
    same = 1 - (1 - beta) ** k
    reject, r = 1.0, p
    for _ in range(k):
        reject *= 1 - torch.minimum(r, q).sum().item()
        r = (r - q).clamp_min(0)
    return same, 1 - reject


def rrs_acceptance_exact(fn) -> None:
    """Exercise 3.4: ``fn(p, q, k) -> float``, the exact acceptance of recursive rejection sampling."""
    with Check("3.4", "SpecInfer's acceptance") as c:
        hint = ("try i accepts with probability beta_i = sum min(p_i, q), where p_1 = p and after a rejection "
                "p_(i+1) = norm(max(0, p_i - q)) (p_i if that is all zero); all k tries fail with probability "
                "prod_i (1 - beta_i)")
        cases = [(*_dirichlet(43 + i, V, a), k, f"random p and q over {V} tokens, k = {k}", small)
                 for i, (V, a, k, small) in enumerate([(4, 1.0, 2, True), (5, 1.0, 3, True), (3, 1.0, 3, True),
                                                       (6, 0.5, 2, True), (50, 1.0, 4, False), (20, 2.0, 8, False),
                                                       (8, 1.0, 1, False)])]
        cases += [(p, q, k, f"{what}, k = {k}", False) for (p, q, what), k in
                  zip(_edge_pairs(), (3, 3, 4, 2), strict=True)]
        p32, q32 = _dirichlet(50, 9)
        cases.append((p32.float(), q32.float(), 3, "float32 tensors, k = 3", False))
        for n, (p, q, k, what, small) in enumerate(cases):
            got = c.call(fn, p.clone(), q.clone(), k)
            value = as_number(got)
            c.expect(value is not None, f"a single number for {what}", "a float", repr(got),
                     "return the probability as a Python float")
            pd, qd = p.double(), q.double()
            expected = float(rrs_acceptance(pd, qd, k))
            tol = 1e-5 if p.dtype == torch.float32 else 1e-7
            same, unnormalized = _rrs_variants(pd, qd, k)
            specific = None
            if math.isnan(value):
                specific = ("when p_i <= q everywhere, max(0, p_i - q) is all zero (then beta_i = 1 and nothing is "
                            "rejected): keep p_i instead of dividing 0 by 0")
            elif abs(value - same) < 1e-9 and abs(same - expected) > 1e-6:
                specific = ("the k tries are not alike: after a rejection the target becomes the residual "
                            "norm(max(0, p_i - q)), so each try has its own beta_i (1 - (1 - beta)^k would hold "
                            "only if every try used p)")
            elif abs(value - unnormalized) < 1e-9 and abs(unnormalized - expected) > 1e-6:
                specific = "max(0, p_i - q) is not a distribution: divide it by its sum before the next try"
            one_tv = torch.minimum(pd, qd).sum().item()
            c.expect(value >= one_tv - tol, f"at least the single-draft acceptance 1 - TV(p, q) for {what} (the "
                     "first try alone accepts that often)", f">= {one_tv}", value, specific or hint)
            if small:
                best = optimal_acceptance_lp(pd, qd, k)
                c.expect(value <= best + tol, f"at most alpha*_k, the best acceptance of any k-draft verifier (a "
                         f"linear program, arlib.decoding.spectr.optimal_acceptance_lp) for {what}",
                         f"<= {best}", value,
                         specific or hint)
            c.expect(abs(value - expected) <= tol + 1e-6 * expected, f"P(some draft is accepted) for {what}",
                     expected, value, specific or hint)
            if small:
                mean, stderr = _simulated_rrs(pd, qd, k, 100_000, 60 + n)
                c.expect(abs(value - mean) < 5 * stderr + 1e-12, f"agreement with 100000 simulated verifications "
                         f"(arlib.decoding.spectr.recursive_rejection_select) for {what}: their acceptance is "
                         f"{mean:.4f} +- {stderr:.4f}", round(mean, 4), value, specific or hint)


def two_draft_optimum(fn) -> None:
    """Exercise 3.5: ``fn(p, q) -> float``, alpha*_2 = min over S of p(S) + 1 - q(S)^2, in O(V log V)."""
    with Check("3.5", "the two-draft optimum") as c:
        hint = ("the minimizing S is a prefix of the tokens sorted by p(x)/q(x) (smallest first; q(x) = 0 means an "
                "infinite ratio, last); evaluate p(S) + 1 - q(S)^2 on every prefix, the empty one included, and "
                "take the smallest")
        cases = [(*_dirichlet(70 + i, V, a), f"random p and q over {V} tokens (concentration {a})", V <= 7)
                 for i, (V, a) in enumerate([(3, 1.0), (5, 0.3), (6, 3.0), (7, 1.0), (84, 0.2), (500, 1.0)])]
        cases += [(p, q, what, True) for p, q, what in _edge_pairs()]
        p32, q32 = _dirichlet(79, 9)
        cases.append((p32.float(), q32.float(), "float32 tensors", True))
        for p, q, what, small in cases:
            got = c.call(fn, p.clone(), q.clone())
            value = as_number(got)
            c.expect(value is not None, f"a single number for {what}", "a float", repr(got),
                     "return the probability as a Python float")
            pd, qd = p.double(), q.double()
            expected = optimal_acceptance_lp(pd, qd, 2) if small else _two_draft_by_prefixes(pd, qd)
            tol = 1e-5 if p.dtype == torch.float32 else 1e-7
            specific = None
            one_tv = torch.minimum(pd, qd).sum().item()
            if abs(value - one_tv) < 1e-9 and abs(one_tv - expected) > 1e-6:
                specific = "that is 1 - TV(p, q), the one-draft optimum: the second draft adds a chance"
            elif abs(value - _two_draft_by_prefixes(pd, qd, descending=True)) < 1e-9 and abs(value - expected) > 1e-6:
                specific = "the prefixes go in increasing order of p/q: the tokens the draft proposes too often first"
            c.expect(abs(value - expected) <= tol, f"alpha*_2 for {what} (the LP over all couplings agrees)",
                     expected, value, specific or hint)


def _two_draft_by_prefixes(p: torch.Tensor, q: torch.Tensor, descending: bool = False) -> float:
    """min over prefixes of the tokens sorted by p/q of p(S) + 1 - q(S)^2 (``descending``: a typical mistake)."""
    ratio = torch.where(q > 0, p / q.clamp_min(1e-300), torch.inf)
    order = ratio.argsort(descending=descending)
    p_prefix = torch.cat([p.new_zeros(1), p[order].cumsum(0)])
    q_prefix = torch.cat([q.new_zeros(1), q[order].cumsum(0)]).clamp(max=1.0)
    return float((p_prefix + 1 - q_prefix ** 2).min().clamp(0.0, 1.0))
