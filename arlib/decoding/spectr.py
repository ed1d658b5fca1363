"""Multi-draft speculative sampling as optimal transport (Sun et al. 2023, "SpecTr").

The book keeps Leviathan's letters throughout: **p is the target, q the draft**. SpecTr's paper swaps
them (its p is the draft, its q the target); every formula below is written in the book's letters, and
the docstrings give the paper's form next to it.

With k i.i.d. drafts X_1 .. X_k ~ q and the target Y ~ p, the best possible acceptance is

    alpha*_k = max over couplings pi of (q^(x)k, p) of P(Y in {X_1, .., X_k})

(a linear program, :func:`optimal_acceptance_lp`; k = 1 gives the maximal coupling, 1 - TV). It equals
``min over S of p(S) + 1 - q(S)^k`` (:func:`acceptance_upper_bound`, max-flow min-cut), whose minimum lies
on a prefix of the tokens sorted by p/q (:func:`optimal_acceptance`, O(V log V)). K-SEQ
(:func:`kseq_select`) reaches at least (1 - 1/e) alpha*_k with O(V log V) work per position; SpecInfer's
recursive rejection sampling (:func:`recursive_rejection_select`, Miao et al. 2024) is the other classic
multi-draft rule.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from arlib.text.sampling import gumbel_noise, inverse_cdf_index, sample_probs
from arlib.validate import generator as check_generator
from arlib.validate import ids_in_vocab, int_at_least, token_ids

__all__ = ["optimal_acceptance_lp", "optimal_acceptance", "acceptance_upper_bound", "kseq_beta", "kseq_rho",
           "kseq_rho_exact", "kseq_acceptance", "kseq_residual", "kseq_select", "recursive_rejection_select",
           "rrs_acceptance", "spectr_generate"]


def _rand(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniforms of ``like``'s dtype drawn on the generator's device (the CPU without one, as before) and
    moved to ``like``'s device: the same numbers for a seed whatever device the probabilities live on."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=gen_device).to(like.device)


def _check_k(k) -> int:
    return int_at_least(k, "k", 1, expected="an int >= 1 (the number of drafts)")


def _check_pair(p, q, atol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """p, q (..., V): torch tensors of probabilities of the same shape (numpy arrays are converted)."""
    tensors = []
    for name, t in (("p", p), ("q", q)):
        try:
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name}: expected a floating tensor of probabilities (..., V), got "
                             f"{type(t).__name__}") from None
        if not t.is_floating_point() or t.dim() < 1 or t.shape[-1] == 0:
            raise ValueError(f"{name}: expected a floating tensor of probabilities (..., V >= 1), got {tuple(t.shape)} "
                             f"{t.dtype}")
        tensors.append(t)
    p, q = tensors
    if p.device != q.device:
        raise ValueError(f"q: on {q.device}, p on {p.device}: expected one device")
    for name, t in (("p", p), ("q", q)):
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError(f"{name}: probabilities must be finite and >= 0")
        err = (t.double().sum(-1) - 1).abs().max().item() if t.numel() else 0.0
        if err > atol:
            raise ValueError(f"{name}: each distribution must sum to 1 (atol {atol:g}); found a sum off by {err:.3g}")
    if p.shape != q.shape:
        raise ValueError(f"q: expected the shape of p {tuple(p.shape)} (same vocabulary), got {tuple(q.shape)}")
    dtype = torch.promote_types(p.dtype, q.dtype)
    return p.to(dtype), q.to(dtype)


# --- the optimum and its bound --------------------------------------------------------------------


def optimal_acceptance_lp(p, q, k: int) -> float:
    """alpha*_k, the best acceptance of any valid k-draft verifier, by linear programming (SpecTr,
    section 3; their letters: max over couplings of p^(x)k and q of P(Y in X)).

    p (V,) target, q (V,) draft. Only the mass that a draft tuple x sends to a target token y in x
    counts, so the LP is a transport problem with variables w(x, y) >= 0 for y in set(x):
    ``sum_y w(x, y) <= q^(x)k(x)``, ``sum_x w(x, y) <= p(y)``, maximize ``sum w`` (unused mass is
    coupled arbitrarily). It has about V^k k variables: small vocabularies and k only. Solved with
    scipy's HiGHS.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    k = _check_k(k)
    p, q = _check_pair(p, q)
    if p.dim() != 1:
        raise ValueError(f"p: expected one distribution (V,), got shape {tuple(p.shape)}")
    V = p.shape[0]
    if V ** k > 2_000_000:
        raise ValueError(f"k: V^k = {V}^{k} draft tuples is too large for the exact LP")
    p_np, q_np = p.double().cpu().numpy(), q.double().cpu().numpy()
    support = np.flatnonzero(q_np > 0)  # tuples with a zero-probability draft carry no mass
    rows, cols, col = [], [], 0  # constraint matrix entries: (constraint, variable)
    n_tuples = 0
    tuple_mass = []
    for t, x in enumerate(itertools.product(support, repeat=k)):
        tuple_mass.append(np.prod(q_np[list(x)]))
        for y in set(x):
            rows += [t, len(support) ** k + int(y)]  # tuple t's mass, target token y's mass
            cols += [col, col]
            col += 1
        n_tuples = t + 1
    A = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_tuples + V, col)).tocsr()
    b = np.concatenate([np.array(tuple_mass), p_np])
    result = linprog(-np.ones(col), A_ub=A, b_ub=b, bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the LP solver failed: {result.message}")
    return float(min(1.0, -result.fun))


def acceptance_upper_bound(p, q, k: int) -> float:
    """``min over subsets S of p(S) + 1 - q(S)^k``, by enumerating the 2^V subsets (V <= 20).

    SpecTr bounds alpha*_k by it (in their letters q(S) + 1 - p(S)^k): a verifier accepts either with
    Y in S (probability <= p(S)) or with Y outside S, which needs a draft outside S, and all k drafts land
    in S with probability q(S)^k. It is in fact equal to alpha*_k: the reduced LP of
    :func:`optimal_acceptance_lp` is a max-flow problem and this is its min cut (chapter 3).
    :func:`optimal_acceptance` finds the same minimum in O(V log V)."""
    k = _check_k(k)
    p, q = _check_pair(p, q)
    if p.dim() != 1 or p.shape[0] > 20:
        raise ValueError(f"p: expected one distribution over at most 20 tokens, got shape {tuple(p.shape)}")
    V = p.shape[0]
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=V)), dtype=torch.float64,
                         device=p.device)  # (2^V, V)
    values = masks @ p.double() + 1 - (masks @ q.double()) ** k
    return float(values.min().clamp(max=1.0))


def optimal_acceptance(p, q, k: int) -> torch.Tensor:
    """alpha*_k exactly in O(V log V), batched over the leading dimensions of p, q (..., V) -> (...).

    alpha*_k = min over S of p(S) + 1 - q(S)^k (the min-cut form of the LP, see
    :func:`acceptance_upper_bound`), and a minimizing S can be taken among the prefixes of the tokens
    sorted by p(x)/q(x): at a minimizer with c = q(S), adding a token a outside S must not help, so
    p(a) >= (c + q(a))^k - c^k >= k c^(k-1) q(a), and removing one inside must not either, so
    p(a) <= c^k - (c - q(a))^k <= k c^(k-1) q(a) (both by convexity of x^k): every ratio inside is at most
    k c^(k-1), every ratio outside at least that. The value is cheap; a verifier that *reaches* it needs
    the LP's coupling."""
    k = _check_k(k)
    p, q = _check_pair(p, q)
    p, q = p.double(), q.double()
    ratio = torch.where(q > 0, p / q.clamp_min(torch.finfo(torch.float64).tiny), torch.inf)  # q = 0: last
    order = ratio.argsort(dim=-1)
    p_prefix = p.gather(-1, order).cumsum(-1)  # (..., V): p(S) for the prefixes of length 1..V
    q_prefix = q.gather(-1, order).cumsum(-1)
    values = p_prefix + 1 - q_prefix.clamp(max=1.0) ** k  # the empty prefix gives 1
    return values.min(-1).values.clamp(0.0, 1.0)


# --- K-SEQ (SpecTr, Algorithm 2) ------------------------------------------------------------------


def _check_rho(rho, p: torch.Tensor) -> torch.Tensor:
    """rho: a finite number > 0, or such numbers of shape p.shape[:-1] (one per distribution)."""
    try:
        t = torch.as_tensor(rho, device=p.device)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.dtype == torch.bool or t.is_complex() \
            or t.shape not in ((), p.shape[:-1]):
        raise ValueError(f"rho: expected a number > 0 or a tensor of shape {tuple(p.shape[:-1])}, got {rho!r}")
    t = t.to(p.dtype)
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError(f"rho: expected finite numbers > 0, got {rho!r}")
    return t


def kseq_beta(p, q, rho) -> torch.Tensor:
    """beta(rho) = sum_x min(q(x), p(x) / rho): the chance that one draft passes K-SEQ's test
    (SpecTr: sum_x min(p(x), q(x) / rho) in their letters). p, q (..., V); rho a number > 0 or (...,)."""
    p, q = _check_pair(p, q)
    rho = _check_rho(rho, p)
    return torch.minimum(q, p / rho[..., None]).sum(-1)


def kseq_rho(p, q, k: int, iterations: int = 60) -> torch.Tensor:
    """rho* in [1, k], the smallest rho with ``1 - (1 - beta(rho))^k <= rho beta(rho)``, by bisection
    (batched over the leading dimensions of p, q (..., V)): the condition that keeps K-SEQ's residual
    non-negative, and at equality the acceptance is largest. Returns (...)."""
    k = _check_k(k)
    int_at_least(iterations, "iterations", 0)
    p, q = _check_pair(p, q)
    lo = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    hi = torch.full(p.shape[:-1], float(k), dtype=p.dtype, device=p.device)

    def feasible(rho):
        beta = kseq_beta(p, q, rho)
        return 1 - (1 - beta) ** k <= rho * beta + 1e-12

    ok_at_one = feasible(lo)  # e.g. p == q, or k == 1: rho = 1 already works
    for _ in range(iterations):
        mid = (lo + hi) / 2
        good = feasible(mid)
        hi = torch.where(good, mid, hi)
        lo = torch.where(good, lo, mid)
    return torch.where(ok_at_one, torch.ones_like(hi), hi)


def kseq_acceptance(p, q, k: int) -> torch.Tensor:
    """K-SEQ's acceptance ``1 - (1 - beta(rho*))^k`` (SpecTr, section 4: at least (1 - 1/e) alpha*_k;
    chapter 3 proves the sharper (1 - (1 - 1/k)^k) alpha*_k). (...)."""
    p, q = _check_pair(p, q)
    beta = kseq_beta(p, q, kseq_rho(p, q, k))
    return 1 - (1 - beta) ** k


def kseq_residual(p, q, k: int, rho=None) -> torch.Tensor:
    """The distribution K-SEQ samples when all k drafts are rejected (SpecTr, Algorithm 2 in our letters):
    ``[p(x) - min(q(x), p(x)/rho) (1 - (1 - beta)^k) / beta] / (1 - beta)^k``. (..., V); where nothing
    can be rejected (beta = 1) it returns p."""
    k = _check_k(k)
    p, q = _check_pair(p, q)
    rho = kseq_rho(p, q, k) if rho is None else _check_rho(rho, p)
    accept = torch.minimum(q, p / rho[..., None])  # (..., V)
    beta = accept.sum(-1, keepdim=True)
    passed = (1 - (1 - beta) ** k) / beta.clamp_min(torch.finfo(p.dtype).tiny)  # (..., 1)
    r = (p - accept * passed).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 1e-12, r / mass.clamp_min(torch.finfo(p.dtype).tiny), p)


def _check_drafts(drafts, batch: int, V: int) -> torch.Tensor:
    token_ids(drafts, "drafts", dim=2, rows=batch, vocab_size=V, expected=f"a ({batch}, k >= 1) torch.long tensor")
    if drafts.shape[1] < 1:
        raise ValueError("drafts: expected at least one draft per row")
    return drafts


def _check_device(drafts: torch.Tensor, p: torch.Tensor) -> None:
    if drafts.device != p.device:
        raise ValueError(f"drafts: on {drafts.device}, p on {p.device}: expected one device")


def kseq_select(p, q, drafts: torch.Tensor, generator: torch.Generator | None = None):
    """One K-SEQ verification (SpecTr, Algorithm 2), batched: p, q (B, V), drafts (B, k) i.i.d. from q.

    Draft i is accepted with probability ``min(1, p(x_i) / (rho q(x_i)))``, in order; the first accepted
    one is the output; if none is, the output is drawn from :func:`kseq_residual`. Returns
    (index (B,) of the accepted draft or -1, token (B,)); the token has law p exactly.
    """
    p, q = _check_pair(p, q)
    if p.dim() != 2:
        raise ValueError(f"p: expected (batch, V), got {tuple(p.shape)}")
    B, V = p.shape
    if isinstance(drafts, torch.Tensor):
        _check_device(drafts, p)
    drafts = _check_drafts(drafts, B, V)
    check_generator(generator)
    k = drafts.shape[1]
    rho = kseq_rho(p, q, k)  # (B,)
    px, qx = p.gather(1, drafts), q.gather(1, drafts)  # (B, k)
    u = _rand((B, k), generator, p)
    accepted = u * rho[:, None] * qx < px  # probability min(1, p / (rho q))
    first = torch.where(accepted.any(1), accepted.long().argmax(1), torch.full((B,), -1, device=p.device))
    fallback = sample_probs(kseq_residual(p, q, k, rho), generator)
    token = torch.where(first >= 0, drafts.gather(1, first.clamp_min(0)[:, None])[:, 0], fallback)
    return first, token


# --- SpecInfer's recursive rejection sampling ------------------------------------------------------


def recursive_rejection_select(p, q, drafts: torch.Tensor, generator: torch.Generator | None = None,
                               replacement: bool = True):
    """Recursive rejection sampling (SpecInfer, Miao et al. 2024), batched: p, q (B, V), drafts (B, k).

    Try the drafts in turn: accept x_i with probability ``min(1, p(x_i) / q(x_i))``; after a rejection
    replace p by ``norm(max(0, p - q))`` and try the next. ``replacement=False`` is the variant for drafts
    drawn *without* replacement from q: after a rejection x_i is also removed from q (q renormalized).
    If all are rejected the output is drawn from the final p. Returns (index or -1 (B,), token (B,)).
    """
    p, q = _check_pair(p, q)
    if p.dim() != 2:
        raise ValueError(f"p: expected (batch, V), got {tuple(p.shape)}")
    B, V = p.shape
    if isinstance(drafts, torch.Tensor):
        _check_device(drafts, p)
    drafts = _check_drafts(drafts, B, V)
    check_generator(generator)
    if not isinstance(replacement, (bool, np.bool_)):
        raise ValueError(f"replacement: expected a bool, got {replacement!r}")
    tiny = torch.finfo(p.dtype).tiny
    p, q = p.clone(), q.clone()
    first = torch.full((B,), -1, device=p.device)
    u = _rand((B, drafts.shape[1]), generator, p)
    for i in range(drafts.shape[1]):
        x = drafts[:, i:i + 1]
        open_ = first < 0
        px, qx = p.gather(1, x)[:, 0], q.gather(1, x)[:, 0]
        take = open_ & (u[:, i] * qx < px)
        first = torch.where(take, torch.full_like(first, i), first)
        rejected = (open_ & ~take)[:, None]
        r = (p - q).clamp_min(0)
        r = torch.where(r.sum(-1, keepdim=True) > 0, r / r.sum(-1, keepdim=True).clamp_min(tiny), p)
        p = torch.where(rejected, r, p)
        if not replacement:
            q_new = q.scatter(1, x, 0.0)
            q_new = torch.where(q_new.sum(-1, keepdim=True) > 0, q_new / q_new.sum(-1, keepdim=True).clamp_min(tiny), q)
            q = torch.where(rejected, q_new, q)
    fallback = sample_probs(p, generator)
    token = torch.where(first >= 0, drafts.gather(1, first.clamp_min(0)[:, None])[:, 0], fallback)
    return first, token


def rrs_acceptance(p, q, k: int) -> torch.Tensor:
    """Exact acceptance of recursive rejection sampling *with* replacement: the residual after a
    rejection does not depend on which draft was rejected, so ``1 - prod_i (1 - beta_i)`` with beta_i =
    sum min(p_i, q) and p_(i+1) = norm(max(0, p_i - q)). p, q (..., V) -> (...)."""
    k = _check_k(k)
    p, q = _check_pair(p, q)
    tiny = torch.finfo(p.dtype).tiny
    reject = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    for _ in range(k):
        beta = torch.minimum(p, q).sum(-1)
        reject = reject * (1 - beta)
        r = (p - q).clamp_min(0)
        mass = r.sum(-1, keepdim=True)
        p = torch.where(mass > 0, r / mass.clamp_min(tiny), p)
    return 1 - reject



# --- SpecTr decoding: k draft sequences, verified as a tree -----------------------------------------
#
# The decoding loop makes one verification decision per tree depth, on one (p, q) pair of V numbers:
# the batched torch functions above cost ~100 tensor calls each (the bisection alone 60 x 3), which is
# slower than the target's forward pass. The loop therefore uses the numpy versions below, with rho
# solved exactly on the segment where it lies instead of bisected over [1, k].


def _kseq_rho_exact(p: np.ndarray, q: np.ndarray, k: int) -> float:
    """rho* of :func:`kseq_rho` for one pair, p, q (V,) float64 numpy, in O(V log V).

    ``rho beta(rho) = sum min(rho q, p)`` increases in rho and ``beta(rho)`` decreases, so the gap
    ``f(rho) = sum min(rho q, p) - 1 + (1 - beta(rho))^k`` increases. Sorting the ratios p(x)/q(x) once,
    ``sum min(rho q, p) = rho A + B`` with A the draft mass of the tokens whose ratio is >= rho and B the
    target mass of the others (prefix sums); evaluating f at every ratio in (1, k) brackets the root,
    and on that segment A and B are constant, so a scalar bisection finishes it."""
    support = q > 0  # tokens the draft never proposes add nothing to either sum
    ratio = p[support] / q[support]
    order = np.argsort(ratio)
    ratio = ratio[order]
    cum_p = np.concatenate(([0.0], np.cumsum(p[support][order])))
    cum_q = np.concatenate(([0.0], np.cumsum(q[support][order])))

    def parts(rho, side):  # (A, B) with the tokens of ratio < rho (side "left") or <= rho ("right") below
        below = np.searchsorted(ratio, rho, side=side)
        return cum_q[-1] - cum_q[below], cum_p[below]

    rho = np.concatenate(([1.0], ratio[(ratio > 1) & (ratio < k)], [float(k)]))  # (m,) sorted segment ends
    A, B = parts(rho, "left")
    gap = rho * A + B - 1 + (1 - A - B / rho) ** k
    if gap[0] >= -1e-12:
        return 1.0
    j = int(np.argmax(gap >= -1e-12))  # gap[-1] >= 0 always (a union bound)
    lo, hi = float(rho[j - 1]), float(rho[j])
    A, B = (float(v) for v in parts(lo, "right"))  # constant on (lo, hi): no ratio lies inside
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid * A + B - 1 + (1 - A - B / mid) ** k >= -1e-12:
            hi = mid
        else:
            lo = mid
    return hi


def kseq_rho_exact(p, q, k: int) -> float:
    """rho* of :func:`kseq_rho` for one pair p, q (V,), exactly and in O(V log V) (sorting the ratios
    p(x)/q(x), see ``_kseq_rho_exact``) instead of 60 bisection passes over the vocabulary."""
    k = _check_k(k)
    p, q = _check_pair(p, q)
    if p.dim() != 1:
        raise ValueError(f"p: expected one distribution (V,), got shape {tuple(p.shape)}")
    return _kseq_rho_exact(p.double().cpu().numpy(), q.double().cpu().numpy(), k)


def _kseq_pick(p: np.ndarray, q: np.ndarray, tokens: np.ndarray, u: np.ndarray) -> tuple[int, int, float]:
    """K-SEQ on one position: p, q (V,), tokens (k,) i.i.d. from q, u (k + 1,) uniforms. Returns (index of
    the accepted draft or -1, token, the rule's acceptance probability); the rule of :func:`kseq_select`."""
    k = len(tokens)
    rho = _kseq_rho_exact(p, q, k)
    accept = np.minimum(q, p / rho)
    beta = accept.sum()
    passed = 1 - (1 - beta) ** k  # P(some draft passes)
    for i, x in enumerate(tokens):
        if u[i] * rho * q[x] < p[x]:
            return i, int(x), passed
    residual = np.maximum(p - accept * (passed / max(beta, 1e-300)), 0)
    if residual.sum() <= 1e-12:
        residual = p
    return -1, inverse_cdf_index(residual, u[k]), passed


def _rrs_pick(p: np.ndarray, q: np.ndarray, tokens: np.ndarray, u: np.ndarray) -> tuple[int, int, float]:
    """Recursive rejection sampling with replacement on one position (see :func:`recursive_rejection_select`);
    returns (index or -1, token, the rule's acceptance probability, as in :func:`rrs_acceptance`)."""
    first, token, rejected, p_i = -1, -1, 1.0, p
    for i, x in enumerate(tokens):
        rejected *= 1 - np.minimum(p_i, q).sum()
        if first < 0 and u[i] * q[x] < p_i[x]:
            first, token = i, int(x)
        r = np.maximum(p_i - q, 0)
        if r.sum() > 0:
            if first < 0:
                p = r / r.sum()  # the law the next draft is verified against
            p_i = r / r.sum()
    if first < 0:
        token = inverse_cdf_index(p, u[len(tokens)])
    return first, token, 1 - rejected


_PICKS = {"kseq": _kseq_pick, "rrs": _rrs_pick}


def _copy_row(cache, row: int, start: int) -> None:
    """Make every batch row of a KV cache equal to ``row`` (the accepted path) over positions [start,
    length): the positions before ``start`` are the same in every row already."""
    n = cache.length
    if start < n:
        cache.k[:, :, :, start:n] = cache.k[:, row:row + 1, :, start:n].clone()
        cache.v[:, :, :, start:n] = cache.v[:, row:row + 1, :, start:n].clone()


@torch.no_grad()
def spectr_generate(target, drafter, prompt: torch.Tensor, max_new_tokens: int, k: int, gamma: int, *,
                    generator: torch.Generator | None = None, select: str = "kseq", temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                    stats: bool = True, tree: bool = False):
    """SpecTr decoding (Sun et al. 2023, section 4): k draft sequences, verified token by token as a tree.

    ``drafter`` is an :class:`arlib.decoding.drafters.ModelDrafter` (its sampling overrides apply to the drafts)
    or a bare draft model. Each step draws k i.i.d. continuations of gamma tokens from the draft model
    (one batched pass per depth), scores all of them with ``target`` in one batched pass over k rows of
    gamma + 1 positions, and walks down the tree: at depth i the rows still alive share the decided
    prefix, so their i-th tokens are i.i.d. draws from q(. | prefix) and a multi-draft rule
    (``select="kseq"`` for K-SEQ, ``"rrs"`` for recursive rejection sampling) picks one, or a
    replacement, with the target's law exactly. The rows whose token was picked stay alive; a
    replacement ends the step; if every depth is accepted a bonus token comes from the target. The
    sampling options (temperature, top-k, top-p, min-p; not greedy: k identical drafts help nothing)
    define p for the target and q for the draft, as in :func:`arlib.decoding.speculative.speculative_generate`.
    Batch size 1: prompt (T,) of at least 2 tokens. Returns (tokens (T + N,),
    :class:`arlib.decoding.speculative.SpecStats`) or the tokens alone with ``stats=False``; the stats' ``betas``
    hold the rule's acceptance probability at every depth it examined (for the alive drafts there), so
    their mean predicts the accepted fraction ``acceptance_rate``.

    ``tree=False`` scores the k sequences as k batch rows of gamma + 1 positions (every row repeats the
    prefix the drafts share); ``tree=True`` merges them into one token tree (:mod:`arlib.decoding.tree`)
    and scores its nodes in one batch-1 pass with tree attention (SpecInfer, Miao et al. 2024). The
    decisions are the same for the same random numbers (up to float rounding in the target's outputs).
    """
    import time as _time

    from arlib.decoding.drafters import ModelDrafter, SamplingOptions
    from arlib.decoding.speculative import SpecStats
    from arlib.decoding.tree import build_tree, keep_path, tree_mask

    k = _check_k(k)
    int_at_least(gamma, "gamma", 1)
    check_generator(generator)
    if not all(hasattr(target, a) for a in ("config", "new_cache", "parameters")):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    if not isinstance(tree, bool):
        raise ValueError(f"tree: expected True or False, got {tree!r}")
    if select not in _PICKS:
        raise ValueError(f"select: expected 'kseq' or 'rrs', got {select!r}")
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long or prompt.dim() != 1 or len(prompt) < 2:
        raise ValueError("prompt: expected a (time,) torch.long tensor of at least 2 tokens")
    int_at_least(max_new_tokens, "max_new_tokens", 0)
    options = SamplingOptions(temperature, top_k, top_p, min_p)
    if isinstance(drafter, ModelDrafter):
        draft, draft_options = drafter.model, drafter._options(options)
    elif hasattr(drafter, "new_cache") and hasattr(drafter, "config"):
        draft, draft_options = drafter, options
    else:
        raise TypeError(f"drafter: expected an arlib.decoding.drafters.ModelDrafter or a GPT, "
                        f"got {type(drafter).__name__}")
    V = target.config.vocab_size
    if draft.config.vocab_size != V:
        raise ValueError(f"drafter: vocabulary of {draft.config.vocab_size} tokens, the target has {V}")
    T = len(prompt)
    if T + max_new_tokens > min(target.config.block_size, draft.config.block_size):
        raise ValueError("max_new_tokens: the output must fit both models' contexts")
    ids_in_vocab(prompt, "prompt", V)  # once: every later token is drawn in range, so no pass re-checks its ids
    pick = _PICKS[select]
    record, start = SpecStats(), _time.perf_counter()
    device = next(target.parameters()).device  # the prompt may live elsewhere (the CPU): out is on the model's
    out = torch.empty(T + max_new_tokens, dtype=torch.long, device=device)
    out[:T] = prompt
    decided = prompt.tolist() + [0] * max_new_tokens  # a python copy of out: no tensor writes per token
    n, end = T, T + max_new_tokens
    t_rows = 1 if tree else k  # a tree keeps one copy of the target's cache
    t_cache, d_cache = target.new_cache(t_rows), draft.new_cache(k)
    tick = _time.perf_counter()
    target(out[None, :T - 1].expand(t_rows, -1), cache=t_cache)  # both caches: every token but the last
    record.target_time += _time.perf_counter() - tick
    draft(out[None, :T - 1].expand(k, -1), cache=d_cache)
    while n < end:
        g = min(gamma, end - n - 1)
        u = torch.rand(max(g, 1), k + 1, generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else "cpu").cpu().numpy()  # (g, k + 1)
        if g == 0:  # the last token: a plain target step
            tick = _time.perf_counter()
            logits = target(out[None, n - 1:n].expand(t_rows, -1), cache=t_cache, validate=False)[0, -1]
            record.target_time += _time.perf_counter() - tick
            decided[n] = inverse_cdf_index(options.probs(logits).double().cpu().numpy(), u[0, 0])
            out[n] = decided[n]
            t_cache.crop(n)
            n += 1
            record.target_calls += 1
            record.accepted.append(0)
            record.drafted.append(0)
            continue
        # draft k sequences by Gumbel-max: feed what the draft cache lacks, then g - 1 more tokens
        shared = {id(t_cache): t_cache.length, id(d_cache): d_cache.length}  # identical in every row up to here
        tick = _time.perf_counter()
        x = out[None, d_cache.length:n].expand(k, -1)  # (k, m >= 1)
        noise = gumbel_noise((g, k, V), generator, device)  # (g, k, V)
        drafts, z = [], []
        for i in range(g):
            z.append(draft_options.process(draft(x, cache=d_cache, validate=False)[:, -1]))  # (k, V)
            x = (z[-1] + noise[i]).argmax(-1, keepdim=True)  # (k, 1): i.i.d. across rows
            drafts.append(x)
        drafts = torch.cat(drafts, 1)  # (k, g)
        qs = torch.stack(z, 1).softmax(-1).double().cpu().numpy()  # (k, g, V): the host verifies (numpy)
        record.draft_time += _time.perf_counter() - tick
        tick = _time.perf_counter()
        if tree:  # one pass over the distinct prefixes; p of row r at depth i is p at node paths[r, i]
            token_tree = build_tree(decided[n - 1], drafts)
            positions = t_cache.length + token_tree.depths
            logits = target(token_tree.tokens[None], cache=t_cache, validate=False,
                            tree=(positions, tree_mask(token_tree, t_cache.length)))[0]  # (N, V)
            paths = token_tree.paths.cpu().numpy()  # (k, g + 1)
            p = options.probs(logits).double().cpu().numpy()[paths]  # (k, g + 1, V)
            record.scored.append(len(token_tree))
        else:
            logits = target(torch.cat([out[None, n - 1:n].expand(k, -1), drafts], 1), cache=t_cache,
                            validate=False)  # (k, g + 1, V)
            p = options.probs(logits).double().cpu().numpy()  # (k, g + 1, V)
            record.scored.append(k * (g + 1))
        record.target_time += _time.perf_counter() - tick
        tokens = drafts.cpu().numpy()
        record.target_calls += 1
        record.draft_calls += g
        alive = np.arange(k)
        accepted = 0
        for i in range(g):
            r = alive[0]  # every alive row shares the prefix: same p_i and q_i
            first, token, acceptance = pick(p[r, i], qs[r, i], tokens[alive, i], u[i])
            record.betas.append(acceptance)
            record.candidates.append(len(alive))
            decided[n + i] = token
            if first < 0:  # a replacement: the step ends here
                break
            accepted += 1
            alive = alive[tokens[alive, i] == token]
        else:
            decided[n + g] = inverse_cdf_index(p[alive[0], g], u[g - 1, k])  # the bonus token (u[g-1, k] is unused)
        row = int(alive[0])
        if tree:  # the target keeps the accepted path's nodes, moved next to the prefix
            keep_path(t_cache, n - 1, paths[row, :accepted + 1].tolist())
        for cache in (d_cache,) if tree else (t_cache, d_cache):  # the accepted path in every row, drop the rest
            cache.crop(min(cache.length, n + accepted))
            if k > 1:
                _copy_row(cache, row, shared[id(cache)])
        out[n:n + accepted + 1] = torch.tensor(decided[n:n + accepted + 1], device=device)
        record.accepted.append(accepted)
        record.drafted.append(g)
        n += accepted + 1
    record.new_tokens = max_new_tokens
    record.wall_time = _time.perf_counter() - start
    return (out, record) if stats else out
