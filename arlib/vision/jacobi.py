"""Fast sampling from a raster-order model without retraining it: speculative Jacobi decoding and
LANTERN's relaxed acceptance.

Speculative Jacobi decoding (SJD, Teng et al. 2024): keep a window of L draft tokens after the decided
prefix. One forward pass over [last decided token, d_1, .., d_L] gives the model's distribution p_i at
every window position (position i conditions on the drafts before it). Accept d_1, d_2, .. in turn with
probability ``min(1, p_i(d_i) / q_i(d_i))``, q_i the distribution d_i was drawn from (speculative
sampling, chapter 2: the accepted token and the residual draw ``norm(max(0, p_i - q_i))`` at the first
rejection have exactly the law p_i). The positions after the first rejection were conditioned on a wrong
token; their p_i are still fine *proposals*: the next drafts are drawn from them (the Jacobi update),
with q = p_i, and new positions at the end of the window start from uniform guesses. If the whole window
passes, the pass's last distribution gives one more token. With every q recorded, the output has the
law of plain sequential sampling, while one pass can decide several tokens.

LANTERN (Jang et al. 2025) relaxes the test for image tokens, where many codes look alike: let B_k(x)
be the k nearest codes of x in the tokenizer's latent space (x first), and A the longest nearest-first
prefix of B_k(x) whose mass ``sum over x' in A, x' != x of p(x')`` stays within a budget delta. The test
uses ``p~(x) = p(x) + that mass`` (p with A's mass moved onto x, within total variation delta of p for
that one draft); after a rejection, x and A are removed from the residual (the book's choice:
removing them keeps the residual off the tokens the relaxed test already weighed). p~ depends on the
draft, so the law of the decided token is not within delta of p in general: chapter 4 computes how far
it moves. delta = 0 is SJD.

Batch size 1 (the window's acceptance differs between images); with classifier-free guidance the
model runs on two rows (conditional, null class) that share the tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from arlib.text.gpt import GPT
from arlib.text.sampling import inverse_cdf_index, process_logits
from arlib.validate import (
    describe,
    float_tensor,
    ids_in_vocab,
    int_at_least,
    int_in_range,
    number_in,
    probability,
    token_ids,
)
from arlib.validate import generator as check_generator
from arlib.vision.generators import GRID, cfg_logits, check_labels

__all__ = ["lantern_neighbors", "proximity_set", "relaxed_target", "jacobi_generate", "sample_raster_sjd"]


def lantern_neighbors(codebook: torch.Tensor, k: int) -> torch.Tensor:
    """(K, k) ids of each code's k nearest codes in Euclidean distance, the code itself first."""
    float_tensor(codebook, "codebook", dim=2, expected="a (K, D) floating tensor of code vectors")
    int_in_range(k, "k", 1, codebook.shape[0])
    distance = torch.cdist(codebook.double(), codebook.double())  # (K, K)
    distance.fill_diagonal_(-1.0)  # the code itself first, even among duplicates
    return distance.argsort(dim=1)[:, :k]


def _check_code(x, V: int) -> int:
    """A code id x in [0, V): an int (or a one-element integer tensor)."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_floating_point() and x.dtype != torch.bool:
        x = int(x)
    return int_in_range(x, "x", 0, V - 1)


def _check_distribution(p, V: int | None = None) -> torch.Tensor:
    """p (V,): a finite, non-negative distribution summing to 1 (within 1e-4)."""
    float_tensor(p, "p", dim=1, expected="a (V,) floating distribution")
    if V is not None and len(p) != V:
        raise ValueError(f"p: expected {V} probabilities, got {len(p)}")
    if bool((p < 0).any()) or abs(float(p.double().sum()) - 1) > 1e-4:
        raise ValueError("p: expected probabilities >= 0 summing to 1")
    return p


def proximity_set(p: torch.Tensor, x: int, neighbors: torch.Tensor, delta: float) -> torch.Tensor:
    """LANTERN's A_(k, delta)(x): the longest nearest-first prefix of ``neighbors[x]`` (x first) whose mass
    other than x's, ``sum p(x')`` over x' != x, is at most ``delta``. Returns the ids (m,), x first.
    p (V,) a distribution, neighbors (V, k) the table of :func:`lantern_neighbors`, delta in [0, 1]."""
    probability(delta, "delta", expected="a total-variation budget in [0, 1]")
    p = _check_distribution(p)
    token_ids(neighbors, "neighbors", dim=2, rows=len(p), vocab_size=len(p),
              expected=f"a ({len(p)}, k) torch.long table of code ids (lantern_neighbors)")
    x = _check_code(x, len(p))
    row = neighbors[x]  # (k,)
    extra = torch.cumsum(torch.where(row == x, torch.zeros_like(p[row]), p[row]), 0)  # mass beyond x, growing
    return row[: int((extra <= delta + 1e-12).sum())]


def relaxed_target(p: torch.Tensor, x: int, members: torch.Tensor) -> torch.Tensor:
    """p~: p with the mass of ``members`` (a proximity set of x) moved onto x; TV(p, p~) = that mass.
    p (V,) a distribution; members (m,) code ids (a repeated id counts once)."""
    p = _check_distribution(p)
    x = _check_code(x, len(p))
    token_ids(members, "members", dim=1, vocab_size=len(p), expected="a (m,) torch.long tensor of code ids")
    tilde = p.clone()
    others = members[members != x].unique()
    tilde[x] = p[x] + p[others].sum()
    tilde[others] = 0
    return tilde


def _relax(p: np.ndarray, x: int, row: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of :func:`proximity_set` and :func:`relaxed_target` for the decoding loop: (p~, A)."""
    extra = np.cumsum(np.where(row == x, 0.0, p[row]))
    members = row[: int((extra <= delta + 1e-12).sum())]
    others = members[members != x]
    tilde = p.copy()
    tilde[x] += p[others].sum()
    tilde[others] = 0.0
    return tilde, members


@torch.no_grad()
def jacobi_generate(model, prefix: torch.Tensor, length: int, vocab: int, window: int = 8, *,
                    temperature: float = 1.0, top_k: int | None = None, cfg_scale: float = 1.0,
                    neighbors: torch.Tensor | None = None, delta: float = 0.0,
                    generator: torch.Generator | None = None):
    """Generate ``length`` tokens after ``prefix`` (R, T) with speculative Jacobi decoding.

    ``model`` is an :class:`arlib.text.gpt.GPT`; only its first ``vocab`` logits are used (the image codes).
    R = 1, or R = 2 for guidance (row 0 conditional, row 1 unconditional; ``cfg_scale`` mixes them).
    ``neighbors`` (vocab, k) and ``delta`` > 0 switch on LANTERN's relaxed test. Returns (tokens
    (length,), stats dict: forward passes, accepted drafts per pass). The verification of a window works
    on numpy copies of its distributions: dozens of tiny tensor operations per pass would cost more than
    the model's pass itself."""
    if not isinstance(model, GPT):
        raise TypeError(f"model: expected an arlib.text.gpt.GPT, got {type(model).__name__}")
    int_at_least(length, "length", 0)
    int_in_range(vocab, "vocab", 1, model.config.vocab_size)
    int_at_least(window, "window", 1)
    probability(delta, "delta", expected="a total-variation budget in [0, 1]")
    number_in(cfg_scale, "cfg_scale", -np.inf, np.inf, bounds="()", expected="a finite guidance scale")
    check_generator(generator)
    if delta > 0:
        if neighbors is None:
            raise ValueError("neighbors: LANTERN (delta > 0) needs the (vocab, k) neighbour table")
        token_ids(neighbors, "neighbors", dim=2, rows=vocab, vocab_size=vocab,
                  expected=f"a ({vocab}, k) torch.long table of code ids (lantern_neighbors)")
    token_ids(prefix, "prefix", dim=2, expected="a (rows, T >= 1) torch.long tensor")
    if prefix.shape[1] < 1 or prefix.shape[0] not in (1, 2) or (prefix.shape[0] == 2) != (cfg_scale != 1.0):
        raise ValueError(f"prefix: expected (1, T >= 1), or (2, T) rows (conditional, null class) when "
                         f"cfg_scale != 1, got {describe(prefix)}")
    ids_in_vocab(prefix, "prefix", model.config.vocab_size)
    if prefix.shape[1] + length > model.config.block_size:
        raise ValueError(f"length: the prefix ({prefix.shape[1]}) and {length} tokens exceed the model's context "
                         f"of {model.config.block_size}")
    device = prefix.device
    gen_device = generator.device if generator is not None else "cpu"
    table = neighbors.cpu().numpy() if delta > 0 else None

    def uniforms(*shape):
        return torch.rand(*shape, generator=generator, device=gen_device, dtype=torch.float64).cpu().numpy()

    uniform = np.full(vocab, 1.0 / vocab)
    cache = model.new_cache(prefix.shape[0])
    if prefix.shape[1] > 1:
        model(prefix[:, :-1], cache=cache)  # every prefix token but the last, fed in each pass
    last = prefix[:, -1:]  # (R, 1): the last decided token of each row, fed first in every pass
    out = []
    drafts, proposals = [], []  # the window: tokens and the distributions (V,) they were drawn from
    passes, accepted_per_pass = 0, []
    while len(out) < length:
        L = min(window, length - len(out))
        for u in uniforms(max(0, L - len(drafts))):  # refill with uniform guesses
            drafts.append(inverse_cdf_index(uniform, u))
            proposals.append(uniform)
        drafts, proposals = drafts[:L], proposals[:L]
        feed = torch.cat([last, torch.tensor([drafts], device=device).expand(len(last), -1)], 1)  # (R, L + 1)
        # the ids are checked in the first pass (the prefix's last token); later ones are drawn in range
        logits = model(feed, cache=cache, validate=passes == 0)[:, :, :vocab].double()  # (R, L + 1, vocab)
        passes += 1
        if cfg_scale != 1.0:
            logits = cfg_logits(logits[0], logits[1], cfg_scale)[None]
        p = process_logits(logits[0], temperature, top_k).softmax(-1).cpu().numpy()  # (L + 1, vocab)
        u = uniforms(L + 1, 3)  # per position: the test, the residual draw, the Jacobi re-draft
        decided, accepted = [], 0
        for i in range(L):
            x, q, target, members = drafts[i], proposals[i], p[i], None
            if table is not None:
                target, members = _relax(target, x, table[x], delta)
            if u[i, 0] * q[x] < target[x]:  # accepted with probability min(1, p(x) / q(x))
                decided.append(x)
                accepted += 1
                continue
            residual = np.maximum(target - q, 0.0)
            if members is not None:
                residual[members] = 0.0
            decided.append(inverse_cdf_index(residual if residual.sum() > 0 else target, u[i, 1]))
            break
        if accepted == L and len(out) + L < length:  # the whole window passed: the last distribution is exact too
            decided.append(inverse_cdf_index(p[L], u[L, 1]))
        accepted_per_pass.append(accepted)
        out.extend(decided)
        cache.crop(cache.length - (L + 1) + len(decided))  # keep the inputs that were right
        last = torch.full((prefix.shape[0], 1), decided[-1], device=device)  # the rows share tokens from now on
        # the Jacobi update: the positions after the decided ones are re-drafted from this pass
        drafts = [inverse_cdf_index(p[j], u[j, 2]) for j in range(len(decided), L + 1)][: length - len(out)]
        proposals = [p[j] for j in range(len(decided), len(decided) + len(drafts))]
    return torch.tensor(out[:length], device=device), {"passes": passes, "accepted": accepted_per_pass}


@torch.no_grad()
def sample_raster_sjd(model, label: int, num_codes: int, num_classes: int = 10, window: int = 8, *,
                      cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
                      neighbors: torch.Tensor | None = None, delta: float = 0.0,
                      generator: torch.Generator | None = None):
    """One image's token grid (7, 7) from a raster model (:func:`arlib.vision.generators.raster_model`) with
    speculative Jacobi decoding (and LANTERN when ``delta`` > 0); returns (grid, stats)."""
    if not isinstance(model, GPT):
        raise TypeError(f"model: expected an arlib.text.gpt.GPT (raster_model), got {type(model).__name__}")
    int_in_range(label, "label", 0, num_classes, expected=f"a class id in [0, {num_classes}] ({num_classes}: null)")
    if model.config.vocab_size != num_codes + num_classes + 1:
        raise ValueError(f"num_codes: the model's vocabulary of {model.config.vocab_size} tokens is not num_codes "
                         f"({num_codes}) + num_classes ({num_classes}) + 1 (the null class)")
    device = next(model.parameters()).device
    labels = check_labels(torch.tensor([label], device=device), num_classes)
    prefix = (num_codes + labels)[:, None]  # (1, 1)
    if cfg_scale != 1.0:
        prefix = torch.cat([prefix, torch.full_like(prefix, num_codes + num_classes)])
    tokens, stats = jacobi_generate(model, prefix, GRID * GRID, num_codes, window, temperature=temperature,
                                    top_k=top_k, cfg_scale=cfg_scale, neighbors=neighbors, delta=delta,
                                    generator=generator)
    return tokens.view(GRID, GRID), stats
