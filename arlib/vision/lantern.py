"""LANTERN as its authors run it: a small trained drafter proposes image tokens and the raster model
verifies them with the relaxed test (Jang et al. 2025, "LANTERN: Accelerating Visual Autoregressive
Models with Relaxed Speculative Decoding"; reference code github.com/jadohu/LANTERN).

The paper's drafter is an EAGLE-2 head drafting a dynamic tree of top-k candidates; a candidate is a
deterministic proposal, so the test compares the target's probability alone (q = 1 for it). The book
drafts a chain of the drafter's top-1 tokens (the dynamic tree cut to one child per node) with a
small raster GPT over the same tokens (recipe ``fashion-raster-draft``). Per drafted token x, with p the
target's distribution at that position:

1. A = the longest nearest-first run of x's k nearest codes (Euclidean, in the tokenizer's codebook;
   x itself not counted) whose total p-mass stays within delta;
2. p~(x) = p(x) + p(A): accept x with probability min(1, p~(x));
3. on a rejection, set p to 0 at x and, if A was not empty, at x's k + 1 nearest codes (the reference
   code's rule, ``evaluate_posterior``: one code more than the k searched); renormalize and draw the
   replacement from what is left (uniform if nothing is).

With delta = 0 the set A is empty and this is speculative sampling with one-hot drafts, exact: x comes
out with probability p(x), any other y with (1 - p(x)) p(y) / (1 - p(x)). With delta > 0 every draft
is likelier to pass, so more tokens are decided per target pass, and the output law moves
(:func:`relaxed_token_law` computes by how much for one position).

Batch size 1; with classifier-free guidance the target and the drafter each run a conditional and a
null-class row that share the tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlib.text.gpt import GPT
from arlib.text.sampling import inverse_cdf_index, process_logits
from arlib.validate import generator as check_generator
from arlib.validate import int_at_least, int_in_range, number_in, positive_int, probability, token_ids
from arlib.vision.generators import GRID, cfg_logits
from arlib.vision.jacobi import proximity_set

__all__ = ["relaxed_token_law", "lantern_speculative", "sample_raster_lantern"]


def _check_table(neighbors, vocab: int, k: int) -> torch.Tensor:
    token_ids(neighbors, "neighbors", dim=2, rows=vocab, vocab_size=vocab,
              expected=f"a ({vocab}, >= {k + 2}) torch.long table of code ids (lantern_neighbors)")
    if neighbors.shape[1] < k + 2:
        raise ValueError(f"neighbors: expected at least k + 2 = {k + 2} columns (the code, its k nearest, one "
                         f"more for the rejection), got {neighbors.shape[1]}")
    return neighbors


def _relaxed_decision(p: np.ndarray, x: int, row: np.ndarray, delta: float, k: int) -> tuple[float, np.ndarray]:
    """(acceptance probability of draft x, replacement weights after a rejection); row: x's neighbours, x first."""
    others = row[1:k + 1]  # x's k nearest codes, nearest first
    run = int((np.cumsum(p[others]) <= delta + 1e-12).sum())  # the longest run within delta
    accept = min(1.0, p[x] + p[others[:run]].sum())
    rest = p.copy()
    rest[x] = 0.0
    if run:
        rest[row[1:k + 2]] = 0.0  # x's k + 1 nearest codes (the reference code's rule)
    return accept, rest


def relaxed_token_law(p: torch.Tensor, x: int, neighbors: torch.Tensor, delta: float, k: int) -> torch.Tensor:
    """The exact law (V,) of the token decided at one position when the drafter proposes x: x with
    probability min(1, p~(x)), else a draw from p with x (and, when A is not empty, x's k + 1 nearest
    codes) removed. p (V,) the target's distribution; neighbors (V, >= k + 2) the table of
    :func:`arlib.vision.jacobi.lantern_neighbors` (each code first); delta in [0, 1]; k >= 1. With delta = 0
    it equals p."""
    probability(delta, "delta", expected="a mass budget in [0, 1]")
    k = positive_int(k, "k")
    proximity_set(p, x, neighbors, delta)  # checks p, x and the table's ids
    V = len(p)
    _check_table(neighbors, V, k)
    accept, rest = _relaxed_decision(p.double().cpu().numpy(), int(x), neighbors[int(x)].cpu().numpy(), delta, k)
    law = torch.zeros(V, dtype=torch.float64)
    if rest.sum() > 0:
        law += (1 - accept) * torch.from_numpy(rest / rest.sum())
    else:
        law += (1 - accept) / V
    law[int(x)] += accept
    return law


def _guided_last(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(R, T, V) logits -> (T, V): the conditional row, mixed with the null row under guidance."""
    return cfg_logits(logits[0], logits[1], cfg_scale) if cfg_scale != 1.0 else logits[0]


@torch.no_grad()
def lantern_speculative(target: GPT, drafter: GPT, prefix: torch.Tensor, length: int, vocab: int, gamma: int = 4,
                        *, neighbors: torch.Tensor | None = None, delta: float = 0.0, k: int = 8,
                        cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
                        generator: torch.Generator | None = None):
    """Generate ``length`` tokens after ``prefix`` (R, T >= 1) with a drafter and LANTERN's relaxed test.

    target and drafter: :class:`arlib.text.gpt.GPT` over one vocabulary whose first ``vocab`` ids are the
    image codes (only those are drafted and scored). R = 1, or 2 with guidance (row 0 conditional, row 1
    the null class). Each round the drafter proposes ``gamma`` top-1 tokens (its guided, tempered logits),
    the target scores them in one pass, and the module's rule decides. ``delta = 0`` is exact speculative
    sampling. Returns (tokens (length,), stats: target passes, drafter steps, drafts accepted per pass)."""
    for name, model in (("target", target), ("drafter", drafter)):
        if not isinstance(model, GPT):
            raise TypeError(f"{name}: expected an arlib.text.gpt.GPT, got {type(model).__name__}")
    if drafter.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"drafter: a vocabulary of {drafter.config.vocab_size}, the target's is "
                         f"{target.config.vocab_size}")
    int_at_least(length, "length", 0)
    int_in_range(vocab, "vocab", 1, target.config.vocab_size)
    gamma = positive_int(gamma, "gamma")
    probability(delta, "delta", expected="a mass budget in [0, 1]")
    k = positive_int(k, "k")
    number_in(cfg_scale, "cfg_scale", -math.inf, math.inf, bounds="()", expected="a finite guidance scale")
    check_generator(generator)
    if delta > 0:
        if neighbors is None:
            raise ValueError("neighbors: LANTERN (delta > 0) needs the (vocab, k + 2) neighbour table")
        _check_table(neighbors, vocab, k)
    token_ids(prefix, "prefix", dim=2, vocab_size=target.config.vocab_size,
              expected="a (rows, T >= 1) torch.long tensor")
    if prefix.shape[1] < 1 or prefix.shape[0] not in (1, 2) or (prefix.shape[0] == 2) != (cfg_scale != 1.0):
        raise ValueError(f"prefix: expected (1, T >= 1), or (2, T) rows (conditional, null class) when cfg_scale "
                         f"!= 1, got {tuple(prefix.shape)}")
    block = min(target.config.block_size, drafter.config.block_size)
    if prefix.shape[1] + length > block:
        raise ValueError(f"length: the prefix ({prefix.shape[1]}) and {length} tokens exceed the context of {block}")
    device, R = prefix.device, prefix.shape[0]
    gen_device = generator.device if generator is not None else "cpu"
    table = neighbors.cpu().numpy() if delta > 0 else None

    def uniforms(n):
        return torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).cpu().numpy()

    def distribution(logits):  # (T, V) guided logits -> (T, vocab) probabilities as numpy
        return process_logits(logits[:, :vocab].double(), temperature, top_k).softmax(-1).cpu().numpy()

    t_cache, d_cache = target.new_cache(R), drafter.new_cache(R)
    context = prefix.clone()  # (R, T): everything decided so far, the class token(s) first
    out, passes, steps, accepted_per_pass = [], 0, 0, []
    while len(out) < length:
        g = min(gamma, length - len(out) - 1)  # the last token of a round may be the bonus
        drafts = []
        feed = context[:, d_cache.length:]  # the drafter catches up with the decided tokens
        for _ in range(g):
            logits = _guided_last(drafter(feed, cache=d_cache, validate=False)[:, -1:], cfg_scale)  # (1, V)
            steps += 1
            drafts.append(int(process_logits(logits[:, :vocab], temperature, top_k).argmax()))  # top-1: q one-hot
            feed = torch.full((R, 1), drafts[-1], device=device)
        start = t_cache.length
        proposal = torch.tensor([drafts], dtype=torch.long, device=device).expand(R, -1)
        scored = torch.cat([context[:, start:], proposal], 1)  # the undecided-for-the-target tokens and drafts
        p = distribution(_guided_last(target(scored, cache=t_cache, validate=passes == 0), cfg_scale))
        p = p[-(g + 1):]  # (g + 1, vocab): the target at each draft and after the last
        passes += 1
        u = uniforms(2 * g + 1)
        decided = []
        for i, x in enumerate(drafts):
            if table is not None:
                accept, rest = _relaxed_decision(p[i], x, table[x], delta, k)
            else:
                rest = p[i].copy()
                rest[x] = 0.0
                accept = p[i][x]
            if u[2 * i] < accept:
                decided.append(x)
                continue
            decided.append(inverse_cdf_index(rest if rest.sum() > 0 else np.ones(vocab), u[2 * i + 1]))
            break
        else:
            decided.append(inverse_cdf_index(p[g], u[2 * g]))  # every draft passed: the next token is exact
        accepted_per_pass.append(len(decided) - 1)
        kept = context.shape[1] + len(decided) - 1  # context, then the accepted drafts (the last decided is new)
        t_cache.crop(min(t_cache.length, kept))
        d_cache.crop(min(d_cache.length, kept))
        context = torch.cat([context, torch.tensor([decided], device=device).expand(R, -1)], 1)
        out.extend(decided)
    return torch.tensor(out[:length], dtype=torch.long, device=device), {"passes": passes, "draft_steps": steps,
                                                       "accepted": accepted_per_pass}


@torch.no_grad()
def sample_raster_lantern(target: GPT, drafter: GPT, label: int, num_codes: int, num_classes: int = 10,
                          gamma: int = 4, *, neighbors: torch.Tensor | None = None, delta: float = 0.0, k: int = 8,
                          cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
                          generator: torch.Generator | None = None):
    """One image's token grid (7, 7) from a raster model and a raster drafter
    (:func:`arlib.vision.generators.raster_model`, both over ``num_codes`` codes) with
    :func:`lantern_speculative`; returns (grid, stats)."""
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT (raster_model), got {type(target).__name__}")
    int_in_range(label, "label", 0, num_classes, expected=f"a class id in [0, {num_classes}] ({num_classes}: null)")
    if target.config.vocab_size != num_codes + num_classes + 1:
        raise ValueError(f"num_codes: the model's vocabulary of {target.config.vocab_size} tokens is not num_codes "
                         f"({num_codes}) + num_classes ({num_classes}) + 1 (the null class)")
    device = next(target.parameters()).device
    prefix = torch.tensor([[num_codes + label]], device=device)
    if cfg_scale != 1.0:
        prefix = torch.cat([prefix, torch.tensor([[num_codes + num_classes]], device=device)])
    tokens, stats = lantern_speculative(target, drafter, prefix, GRID * GRID, num_codes, gamma, neighbors=neighbors,
                                        delta=delta, k=k, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                                        generator=generator)
    return tokens.view(GRID, GRID), stats
