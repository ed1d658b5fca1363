"""An optimal k-draft verifier that runs: Khisti et al.'s canonical decomposition, solved exactly.

Book's letters: **p is the target, q the draft**; the k drafts X_1 .. X_k are i.i.d. from q.

Khisti et al. (ICLR 2025, "Multi-Draft Speculative Sampling: Canonical Decomposition and Theoretical
Limits", Theorem 1) show that an optimal verifier can always be written in two steps:

1. **selection** (importance sampling): from the multiset m of drafts, pick one of its tokens Z with
   weights w(m, z); Z then has a law r(z) = sum_m P(m) w(m, z);
2. **single-draft speculative sampling** of Z against the target: accept Z with probability
   min(1, p(Z) / r(Z)), otherwise draw from norm(max(0, p - r)).

Step 2 makes the output exactly p for *any* selection (chapter 2's lemma, with r as the draft), and it
accepts with probability sum_z min(p(z), r(z)). The best selection is a max-flow problem: tuples send
their mass to one of their members, token y takes at most p(y). Its value is alpha*_k, the optimum of
SpecTr's transport LP (Sun et al. 2023), = min_S p(S) + 1 - q(S)^k (Hu et al., ICLR 2025, evaluate it in
O(V log V); :func:`arlib.decoding.spectr.optimal_acceptance`). For k = 2 Khisti et al. give that value in
closed form.

:func:`optimal_verifier` solves the flow as an LP over **multisets** of drafts (C(n + k - 1, k) of them
for n tokens with q > 0, not n^k tuples): about 3,600 multisets for the book's 84 characters at k = 2,
so the optimum runs at every position of a real model for k = 2 and small vocabularies at k = 3.
Thomas and Pal (NeurIPS 2025, "Partial Resolution") find the optimal coupling in time exponential in k
but linear in V, by solving for only the parameters the sampler needs; this module does not build
their algorithm.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from arlib.decoding.spectr import optimal_acceptance
from arlib.validate import generator as check_generator
from arlib.validate import ids_in_vocab, int_at_least, token_ids

__all__ = ["OptimalVerifier", "optimal_verifier"]

MAX_MULTISETS = 400_000  # the LP's size; beyond it HiGHS takes minutes


@dataclass
class OptimalVerifier:
    """The solved canonical decomposition for one (p, q, k).

    ``multisets`` (M, k) sorted token ids, ``prob`` (M,) their probabilities under k i.i.d. draws,
    ``weights`` (M, k) the selection weights of each multiset's entries (a repeated token's weight sits
    on its first copy), ``r`` (V,) the selected token's law, ``acceptance`` sum_z min(p(z), r(z)).

    Limitation: built by :func:`optimal_verifier`, which solves for every field; a verifier assembled by
    hand is not checked for consistency (that would mean solving the LP again)."""

    p: torch.Tensor
    q: torch.Tensor
    k: int
    multisets: np.ndarray
    prob: np.ndarray
    weights: np.ndarray
    r: torch.Tensor
    acceptance: float
    index: dict

    def select(self, drafts, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Verify rows of k drafts. drafts (B, k) token ids drawn i.i.d. from q -> (y (B,), accepted (B,)):
        y follows p exactly; accepted says whether y came from the drafts (step 2 kept Z)."""
        check_generator(generator)
        drafts = token_ids(drafts, "drafts", dim=2)
        drafts = ids_in_vocab(drafts, "drafts", self.p.shape[-1])
        if drafts.shape[1] != self.k:
            raise ValueError(f"drafts: expected {self.k} drafts per row (the verifier's k), got {drafts.shape[1]}")
        B = drafts.shape[0]
        gen_device = generator.device if generator is not None else "cpu"
        u = torch.rand((B, 3), generator=generator, dtype=torch.float64, device=gen_device).cpu().numpy()
        residual = (self.p - self.r).clamp_min(0).double().cpu()
        residual = (residual / residual.sum()).numpy() if float(residual.sum()) > 0 else self.p.double().cpu().numpy()
        p, r = self.p.double().cpu().numpy(), self.r.double().cpu().numpy()
        ys, accepted = np.empty(B, dtype=np.int64), np.zeros(B, dtype=bool)
        for b, row in enumerate(drafts.cpu().numpy()):
            key = tuple(sorted(int(t) for t in row))
            if key not in self.index:
                raise ValueError(f"drafts: row {b} holds a token with q = 0, which i.i.d. draws from q never give")
            m = self.index[key]
            j = min(int(np.searchsorted(np.cumsum(self.weights[m]), u[b, 0] * self.weights[m].sum(), "right")),
                    self.k - 1)
            z = int(self.multisets[m, j])
            if u[b, 1] * r[z] < p[z]:  # accept with min(1, p(z) / r(z))
                ys[b], accepted[b] = z, True
            else:
                ys[b] = min(int(np.searchsorted(np.cumsum(residual), u[b, 2], "right")), len(p) - 1)
        return torch.from_numpy(ys).to(self.p.device), torch.from_numpy(accepted).to(self.p.device)

    def output_law(self) -> torch.Tensor:
        """The exact law of ``select``'s output, by enumerating the multisets: (V,) float64. Equals p.
        The selected token's law comes from the weights; step 2 uses ``r`` as ``select`` does."""
        p, r = self.p.double().cpu().numpy(), self.r.double().cpu().numpy()
        selected = np.zeros_like(p)
        np.add.at(selected, self.multisets.ravel(), (self.prob[:, None] * self.weights).ravel())
        keep = np.minimum(1.0, p / np.where(r > 0, r, 1.0))
        residual = np.clip(p - r, 0, None)
        residual = residual / residual.sum() if residual.sum() > 0 else p
        return torch.from_numpy(selected * keep + float((selected * (1 - keep)).sum()) * residual)


def _multisets(support: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every multiset of k tokens from ``support`` (M, k) and its probability under k i.i.d. draws from q:
    the multinomial k! / prod(c!) * prod q^c."""
    rows = np.array(list(itertools.combinations_with_replacement(support.tolist(), k)), dtype=np.int64)
    prob = np.full(len(rows), float(math.factorial(k)))
    for j in range(k):
        prob *= q[rows[:, j]]
    for m, row in enumerate(rows):  # divide by the factorials of the repeat counts
        for count in np.unique(row, return_counts=True)[1]:
            prob[m] /= math.factorial(int(count))
    return rows, prob


def optimal_verifier(p, q, k: int) -> OptimalVerifier:
    """Solve Khisti et al.'s canonical decomposition for p (V,) target, q (V,) draft and k i.i.d. drafts.

    The LP: f(m, y) >= 0 for each multiset m and each distinct token y in it, the mass of m that is
    selected as y *and accepted*; sum_y f(m, y) <= P(m), sum_m f(m, y) <= p(y); maximize sum f. Its value
    is alpha*_k. The selection weights are f(m, y) / P(m) plus, for the mass m does not send anywhere,
    its first token (any member would do: a token's acceptance min(p, r) only grows with r)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    k = int_at_least(k, "k", 1, expected="an int >= 1 (the number of drafts)")
    optimum = optimal_acceptance(p, q, k)  # first: it checks that p and q are distributions of one shape
    p, q = torch.as_tensor(p), torch.as_tensor(q)
    if p.dim() != 1:
        raise ValueError(f"p: expected one distribution (V,), got shape {tuple(p.shape)}")
    optimum = float(optimum)
    V = p.shape[0]
    p_np, q_np = p.double().cpu().numpy(), q.double().cpu().numpy()
    support = np.flatnonzero(q_np > 0)
    count = math.comb(len(support) + k - 1, k)
    if count > MAX_MULTISETS:
        raise ValueError(f"k: {count:,} multisets of {k} drafts over {len(support)} tokens; at most "
                         f"{MAX_MULTISETS:,} are solved exactly (use K-SEQ beyond)")
    multisets, prob = _multisets(support, q_np, k)
    # variables: one per (multiset, position of a first copy); repeated tokens share the first copy's
    first = np.ones_like(multisets, dtype=bool)
    first[:, 1:] = multisets[:, 1:] != multisets[:, :-1]
    m_idx, j_idx = np.nonzero(first)
    n_var, M = len(m_idx), len(multisets)
    rows = np.concatenate([m_idx, M + multisets[m_idx, j_idx]])
    cols = np.concatenate([np.arange(n_var), np.arange(n_var)])
    A = coo_matrix((np.ones(2 * n_var), (rows, cols)), shape=(M + V, n_var)).tocsr()
    result = linprog(-np.ones(n_var), A_ub=A, b_ub=np.concatenate([prob, p_np]), bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the LP solver failed: {result.message}")
    flow = np.zeros_like(multisets, dtype=np.float64)
    flow[m_idx, j_idx] = np.clip(result.x, 0, None)
    # HiGHS satisfies the constraints to ~1e-7: shrink the flow until it is exactly feasible, so that the
    # selection weights sum to one and r is a distribution
    flow *= np.minimum(1.0, prob / np.maximum(flow.sum(1), 1e-300))[:, None]
    into = np.zeros(V)
    np.add.at(into, multisets.ravel(), flow.ravel())
    flow *= np.minimum(1.0, p_np / np.maximum(into, 1e-300))[multisets]
    flow[:, 0] += np.clip(prob - flow.sum(1), 0, None)  # unaccepted mass: select the first member
    weights = flow / prob[:, None]
    r = np.zeros(V)
    np.add.at(r, multisets.ravel(), flow.ravel())
    r_t = torch.from_numpy(r).to(p.device, p.dtype)
    acceptance = float(np.minimum(p_np, r).sum())
    if abs(acceptance - optimum) > 1e-6:  # the LP and the min-cut formula are the same number
        raise RuntimeError(f"the LP reached {acceptance:.9f}, not the optimum {optimum:.9f}")
    index = {tuple(int(t) for t in row): m for m, row in enumerate(multisets)}
    return OptimalVerifier(p, q, k, multisets, prob, weights, r_t, acceptance, index)
