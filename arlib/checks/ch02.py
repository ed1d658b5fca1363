"""Checks for chapter 2 (speculative decoding: verification, its theory, and prompt-lookup drafts)."""

from __future__ import annotations

import math

import numpy as np
import torch

from arlib.checks.core import Check, as_integer, as_number
from arlib.decoding.drafters import NGramDrafter
from arlib.decoding.speculative import expected_tokens, optimal_gamma
from arlib.decoding.speculative import residual as reference_residual


def _simulated_tokens(alpha: float, gamma: int, steps: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of tokens per target call over ``steps`` simulated verifications."""
    g = torch.Generator().manual_seed(seed)
    accepted = torch.rand(steps, gamma, generator=g, dtype=torch.float64) < alpha  # i.i.d. acceptance
    tokens = accepted.long().cumprod(dim=1).sum(dim=1).double() + 1  # leading run of acceptances, + 1
    return tokens.mean().item(), tokens.std().item() / math.sqrt(steps)


def expected_tokens_sum(fn) -> None:
    """Exercise 2.1: ``fn(alpha, gamma) -> float``, E[tokens per target call] = sum_k P(tokens >= k)."""
    with Check("2.1", "expected tokens per target call") as c:
        hint = ("tokens = N + 1 with P(N >= k) = alpha^k for k = 0 .. gamma, so "
                "E[tokens] = sum over k = 1 .. gamma + 1 of P(tokens >= k) = sum over k = 0 .. gamma of alpha^k")
        cases = [(a, g) for a in (0.75, 0.3, 0.9, 0.0, 1.0) for g in (5, 2, 1, 0)]
        cases += [(0.5, 64), (0.99, 200), (1.0, 64), (0.0, 64)]
        for alpha, gamma in cases:
            got = c.call(fn, alpha, gamma)
            value = as_number(got)
            c.expect(value is not None, f"a single number for alpha = {alpha}, gamma = {gamma}", "a float",
                     type(got).__name__, "return a Python float")
            expected = float(expected_tokens(alpha, gamma))
            mistakes = [(expected - 1, "you computed the accepted drafts N; the target adds one more token"),
                        (expected - alpha**gamma, "the sum stops one term early: k runs from 0 to gamma inclusive")]
            specific = next((h for v, h in mistakes if abs(value - v) < 1e-6 * expected and v != expected), None)
            if math.isnan(value):
                specific = "at alpha = 1 the closed form divides 0 by 0; the sum has no such problem"
            c.expect(abs(value - expected) <= 1e-6 * expected,  # float32 sums are fine
                     f"E[tokens] for alpha = {alpha}, gamma = {gamma}", expected, value, specific or hint)
        for alpha, gamma, seed in [(0.7, 5, 20), (0.9, 12, 21)]:
            mean, stderr = _simulated_tokens(alpha, gamma, 100_000, seed)
            value = as_number(c.call(fn, alpha, gamma))
            c.expect(value is not None and abs(value - mean) < 5 * stderr,
                     f"agreement with 100000 simulated verifications (alpha = {alpha}, gamma = {gamma}): "
                     f"their mean is {mean:.4f} +- {stderr:.4f}", round(mean, 4), value, hint)


def residual_distribution(fn) -> None:
    """Exercise 2.2: ``fn(p, q) -> (V,)``, the residual ``norm(max(0, p - q))``; p itself when p == q."""
    with Check("2.2", "the residual distribution") as c:
        hint = ("take max(0, p - q) and divide it by its sum (which is 1 - beta); "
                "return p itself when that sum is 0")
        g = torch.Generator().manual_seed(22)
        cases = []
        for V, scale in [(2, 1.0), (5, 1.0), (5, 3.0), (50, 2.0), (84, 4.0)]:
            p = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64) * scale, dim=-1)
            q = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64) * scale, dim=-1)
            cases.append((p, q, f"random p and q over {V} tokens"))
        t = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
        cases += [
            (t(0.5, 0.5, 0.0), t(0.0, 0.5, 0.5), "q = 0 where p > 0"),
            (t(0.0, 1.0, 0.0), t(0.2, 0.3, 0.5), "p one-hot"),
            (t(0.2, 0.5, 0.3), t(0.0, 1.0, 0.0), "q one-hot (a prompt-lookup draft)"),
            (torch.softmax(torch.randn(6, generator=g), dim=-1), torch.softmax(torch.randn(6, generator=g), dim=-1),
             "float32 tensors"),
        ]
        for p, q, what in cases:
            got = c.call(fn, p.clone(), q.clone())
            ok = isinstance(got, torch.Tensor) and got.shape == p.shape
            c.expect(ok, f"a tensor of the shape of p for {what}", f"tensor of shape {tuple(p.shape)}",
                     got if isinstance(got, torch.Tensor) else type(got).__name__, "return a 1-D tensor like p")
            got = got.double()
            c.expect(bool(torch.isfinite(got).all()) and bool((got >= 0).all()), f"valid probabilities for {what}",
                     "finite values >= 0", got, "clamp p - q at 0 before normalizing")
            c.expect(abs(got.sum().item() - 1) < 1e-5, f"the residual sums to 1 for {what}", 1.0, got.sum().item(),
                     "normalize: divide max(0, p - q) by its sum")
            beta = torch.minimum(p, q).sum().double()
            rebuilt = torch.minimum(p, q).double() + (1 - beta) * got
            c.close(rebuilt, p.double(), f"min(p, q) + (1 - beta) * residual = p for {what} "
                    "(accept-or-resample must give back the target)", hint=hint, atol=1e-6)
            c.close(got, reference_residual(p, q).double(), f"the residual for {what}", hint=hint, atol=1e-6)
        for p in [torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0])]:
            got = c.call(fn, p.clone(), p.clone())
            c.expect(isinstance(got, torch.Tensor) and got.shape == p.shape, "a tensor when p == q",
                     f"tensor of shape {tuple(p.shape)}", got if isinstance(got, torch.Tensor) else type(got).__name__,
                     "return a 1-D tensor like p")
            ok = bool(torch.isfinite(got).all()) and torch.allclose(got.double(), p.double())
            c.expect(ok, "the convention when p == q (max(0, p - q) is all zeros: no rejection can happen)",
                     reference_residual(p, p), got,
                     "0 / 0 gives nan; check whether the sum is 0 and return p itself then")


def optimal_gamma_search(fn) -> None:
    """Exercise 2.3: ``fn(alpha, c, max_gamma=32) -> int``, the gamma in [1, max_gamma] maximizing the speedup."""
    with Check("2.3", "the best number of drafts") as c:
        hint = ("evaluate (1 - alpha^(gamma + 1)) / ((1 - alpha) (gamma c + 1)) for every gamma = 1 .. max_gamma "
                "(both ends included) and return the gamma with the largest value (the first one on a tie)")
        cases = [(0.8, 0.05, None), (0.0, 0.1, None), (0.3, 0.05, None), (0.6, 0.01, None), (0.6, 0.1, None),
                 (0.8, 0.2, None), (0.9, 0.01, None), (0.9, 0.05, None), (0.95, 0.1, None), (0.99, 0.2, None),
                 (0.99, 0.5, None), (0.7, 1.0, None), (0.95, 0.01, None), (0.99, 0.05, 8), (0.97, 0.02, 64),
                 (0.5, 0.01, 3)]
        for alpha, cost, max_gamma in cases:
            if max_gamma is None:
                got = c.call(fn, alpha, cost)
                where, max_gamma = f"alpha = {alpha}, c = {cost} (default max_gamma = 32)", 32
            else:
                got = c.call(fn, alpha, cost, max_gamma=max_gamma)
                where = f"alpha = {alpha}, c = {cost}, max_gamma = {max_gamma}"
            value = as_integer(got)
            c.expect(value is not None, f"an integer for {where}", "an int", repr(got),
                     "return an int (e.g. int(...) of an argmax plus the first gamma)")
            expected = optimal_gamma(alpha, cost, max_gamma)
            specific = None
            if value == expected - 1 and expected == max_gamma:
                specific = "gamma = max_gamma is allowed too: try every gamma from 1 to max_gamma, both included"
            elif value == expected - 1:
                specific = "an index is not a gamma: gamma starts at 1, index 0"
            elif value == max_gamma and expected != max_gamma:
                specific = ("more drafts always give more tokens per call, but each costs c; "
                            "maximize tokens per unit of time, not tokens")
            c.expect(value == expected, f"the best gamma for {where}", expected, value, specific or hint)


def _reference_draft(tokens: list[int], n: int, gamma: int) -> list[int]:
    seq = torch.tensor([tokens], dtype=torch.long)
    return NGramDrafter(max_n=n, min_n=n).propose(seq, gamma).tokens[0].tolist()


def prompt_lookup(fn) -> None:
    """Exercise 2.4: ``fn(tokens, n, gamma) -> list[int]``, the prompt-lookup draft of
    :class:`~arlib.decoding.drafters.NGramDrafter`."""
    with Check("2.4", "a prompt-lookup drafter") as c:
        hint = ("look for the last n tokens at every earlier start i (tokens[i:i + n], with i + n < len(tokens)), "
                "take the largest such i, and copy what follows it: draft[j] = tokens[i + n + j] while that is "
                "before the end, and draft[j] = draft[j - d] after (d = len(tokens) - n - i); [] without a match")
        cases = [
            ([1, 2, 3, 4, 1, 2], 2, 3, "one earlier match"),
            ([5, 1, 2, 7, 1, 2, 8, 9, 1, 2], 2, 2, "two earlier matches: the most recent one counts"),
            ([5, 1, 2, 7, 1, 2, 8, 9, 1, 2], 1, 3, "n = 1, several matches"),
            ([1, 2, 3, 4], 1, 3, "no match"),
            ([7], 1, 4, "a single token"),
            ([3, 3], 2, 4, "too short to hold an earlier match"),
            ([1, 2, 1, 2, 1, 2], 2, 5, "a loop of period 2, continued past the end"),
            ([4, 4, 4], 1, 4, "a repeated token"),
            ([9, 8, 7, 6, 9, 8, 7], 3, 6, "a match 4 tokens back, gamma larger than what follows it"),
            ([1, 2, 3, 1, 2, 3], 3, 2, "a match that ends where the suffix starts"),
            ([1, 2, 1, 2], 2, 0, "gamma = 0"),
        ]
        g = torch.Generator().manual_seed(24)
        for k in range(40):
            length = int(torch.randint(2, 60, (1,), generator=g))
            vocab = int(torch.randint(2, 7, (1,), generator=g))
            n, gamma = 1 + k % 3, (1, 4, 8, 16)[k % 4]
            cases.append((torch.randint(0, vocab, (length,), generator=g).tolist(), n, gamma,
                          f"a random sequence of {length} tokens over {vocab} symbols"))
        for tokens, n, gamma, what in cases:
            got = c.call(fn, list(tokens), n, gamma)
            ok = isinstance(got, (list, tuple)) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                                        for t in got)
            c.expect(ok, f"a list of ints for {what}", "list[int]", got if isinstance(got, (list, tuple))
                     else type(got).__name__, "return a Python list of token ids (possibly empty)")
            expected = _reference_draft(tokens, n, gamma)
            c.expect([int(t) for t in got] == expected,
                     f"the draft for {what}: tokens = {tokens}, n = {n}, gamma = {gamma}", expected, list(got), hint)


def accept_prefix(fn) -> None:
    """Exercise 2.5: ``fn(p_x, q_x, u) -> int``, the number of leading drafts accepted by ``u q < p``."""
    with Check("2.5", "accepting a prefix of the drafts") as c:
        hint = ("draft i is accepted when u_i < min(1, p_i / q_i), i.e. u_i q_i < p_i (strictly), and only if "
                "every draft before it was accepted; count the leading run of acceptances")
        t = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
        cases = [
            (t(0.3, 0.1, 0.7), t(0.3, 0.1, 0.7), t(0.9, 0.99, 0.5), "q_x = p_x: every draft is accepted"),
            (t(0.6, 0.9), t(0.2, 0.3), t(0.99, 0.95), "p_x > q_x: accepted whatever u"),
            (t(0.5, 0.0, 0.9), t(0.5, 0.3, 0.9), t(0.1, 0.0, 0.2), "p_x = 0 (even with u = 0)"),
            (t(0.9, 0.1, 0.9), t(0.5, 0.5, 0.5), t(0.3, 0.5, 0.1), "a rejection, then a draft that would pass"),
            (t(0.2, 0.9), t(0.6, 0.1), t(0.5, 0.1), "p_x < q_x with u above p/q"),
            (t(0.2, 0.9), t(0.6, 0.1), t(0.3, 0.1), "p_x < q_x with u below p/q"),
            (t(0.7, 0.4, 0.05), t(1.0, 1.0, 1.0), t(0.6, 0.3, 0.2), "one-hot drafts (q_x = 1): accept with p_x"),
            (t(0.1), t(0.8), t(0.2), "a single draft, rejected"),
        ]
        g = torch.Generator().manual_seed(25)
        for k in range(30):
            gamma = 1 + k % 8
            p_x = torch.rand(gamma, generator=g, dtype=torch.float64)
            q_x = torch.rand(gamma, generator=g, dtype=torch.float64).clamp_min(1e-3)
            u = torch.rand(gamma, generator=g, dtype=torch.float64) ** 3  # small u: longer runs get tested
            cases.append((p_x, q_x, u, f"random drafts (gamma = {gamma})"))
        for p_x, q_x, u, what in cases:
            got = c.call(fn, p_x.clone(), q_x.clone(), u.clone())
            value = as_integer(got)
            c.expect(value is not None, f"an integer for {what}", "an int", repr(got),
                     "return the count as an int (int(...) of a tensor)")
            accepted = u * q_x < p_x
            expected = int(accepted.long().cumprod(dim=0).sum())
            specific = None
            if value == int(accepted.sum()) and value != expected:
                specific = "the first rejection ends the step: drafts after it are discarded even if they would pass"
            elif value == int((u * q_x <= p_x).long().cumprod(dim=0).sum()) and value != expected:
                specific = ("the test is strict, u q < p: with u = 0 (torch.rand can return 0) a token the target "
                            "gives probability 0 must still be rejected")
            elif value == int((u * p_x < q_x).long().cumprod(dim=0).sum()) and value != expected:
                specific = "the acceptance probability is min(1, p/q), target over draft, not q/p"
            c.expect(value == expected, f"accepted drafts for {what}: p_x = {p_x.tolist()}, q_x = {q_x.tolist()}, "
                     f"u = {u.tolist()}", expected, value, specific or hint)
