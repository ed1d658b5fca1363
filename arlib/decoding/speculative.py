"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): several tokens per target call, exactly.

Letters follow Leviathan et al.: p is the target's distribution, q the draft's (Chen et al. and SpecTr
swap them). A drafter proposes x_1 .. x_gamma with x_i ~ q_i; one target pass scores the gamma + 1
positions; :func:`verify` accepts x_i with probability ``min(1, p_i(x_i) / q_i(x_i))`` left to right, and
at the first rejection draws from the residual ``norm(max(0, p_i - q_i))``; if every draft is accepted it
draws a bonus token from p_(gamma+1). Each emitted token is then distributed exactly as p
(Leviathan et al. 2023, Theorem 3.5): ``min(p, q)(x) + (1 - beta) * residual(x) = p(x)`` with
``beta = sum_x min(p(x), q(x)) = 1 - TV(p, q)``.

The theory (section 3 of the paper) lives here too: :func:`expected_tokens`, :func:`speedup`,
:func:`optimal_gamma` and :func:`acceptance_rate`. The drafters are in :mod:`arlib.decoding.drafters`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from arlib.decoding.draft_heads import ExitHeads
from arlib.decoding.drafters import Draft, Drafter, ModelDrafter, NGramDrafter, SamplingOptions
from arlib.decoding.drafters import check_prompt as _check_prompt
from arlib.text.gpt import GPT, KVCache, causal_mask
from arlib.text.sampling import gumbel_noise, sample_probs
from arlib.validate import describe, ids_in_vocab, int_at_least, int_in_range, number_in, positive_int, token_ids
from arlib.validate import generator as check_generator

__all__ = ["layerskip_generate", "verify", "verify_greedy", "residual", "Verification", "acceptance_rate",
           "expected_tokens", "speedup", "optimal_gamma", "speculative_generate", "SpecStats", "SCHEDULES",
           "draft_cost", "step_costs", "Draft", "Drafter", "ModelDrafter", "NGramDrafter", "SamplingOptions"]

# --- verification -------------------------------------------------------------------------------


class Verification(NamedTuple):
    """Result of one verification: ``n_accepted`` (B,) in [0, gamma] and ``next_token`` (B,), the
    token drawn after the accepted drafts (from the residual, or the bonus token from p_(gamma+1)).
    Limitation: a plain result record (a named tuple), not checked when built."""

    n_accepted: torch.Tensor
    next_token: torch.Tensor


def _check_tokens(tokens, name: str) -> tuple[int, int]:
    token_ids(tokens, name, dim=2, expected="a (batch, gamma) torch.long tensor")
    if tokens.shape[1] < 1:
        raise ValueError(f"{name}: expected gamma >= 1 draft tokens per row, got gamma = {tokens.shape[1]}")
    return tokens.shape


def _check_probs(t, name: str, atol: float) -> None:
    """t (..., V): finite, non-negative, each distribution summing to 1 within ``atol``."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor of probabilities, got {describe(t)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    if bool((t < 0).any()):
        raise ValueError(f"{name}: probabilities must be >= 0, found {t.min().item():.3g}")
    err = (t.double().sum(dim=-1) - 1).abs()
    if bool((err > atol).any()):
        raise ValueError(f"{name}: each distribution must sum to 1 (atol {atol:g}); found a sum off by "
                         f"{err.max().item():.3g}")


def _check_verify(p, q, draft_tokens, atol: float) -> None:
    number_in(atol, "atol", 0, np.inf, bounds="[)", expected="a finite tolerance >= 0")
    B, G = _check_tokens(draft_tokens, "draft_tokens")
    if not isinstance(p, torch.Tensor) or p.dim() != 3 or p.shape[:2] != (B, G + 1):
        raise ValueError(f"p: expected target probabilities of shape (batch, gamma + 1, V) = ({B}, {G + 1}, V) "
                         f"for draft_tokens of shape ({B}, {G}), got {describe(p)}")
    _check_probs(p, "p", atol)
    V = p.shape[-1]
    if q is not None:
        if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[:2] != (B, G):
            raise ValueError(f"q: expected draft probabilities of shape (batch, gamma, V) = ({B}, {G}, V), "
                             f"got {describe(q)}")
        if q.shape[-1] != V:
            raise ValueError(f"q: vocabulary mismatch: p has V = {V} tokens, q has V = {q.shape[-1]}")
        if q.device != p.device:
            raise ValueError(f"q: on {q.device}, p on {p.device}: expected one device")
        _check_probs(q, "q", atol)
    if draft_tokens.device != p.device:
        raise ValueError(f"draft_tokens: on {draft_tokens.device}, p on {p.device}: expected one device")
    ids_in_vocab(draft_tokens, "draft_tokens", V)
    if q is not None:
        impossible = (q.gather(-1, draft_tokens[..., None]).squeeze(-1) == 0).nonzero()  # (K, 2)
        if len(impossible):
            b, i = impossible[0].tolist()
            raise ValueError(f"draft_tokens: token {draft_tokens[b, i].item()} at row {b}, position {i} has "
                             f"q = 0: it cannot have been drawn from q")


def _check_pair(p, q, atol: float = 1e-4) -> None:
    """p, q (..., V): distributions of one shape (one vocabulary)."""
    _check_probs(p, "p", atol)
    if isinstance(q, torch.Tensor) and q.device != p.device:
        raise ValueError(f"q: on {q.device}, p on {p.device}: expected one device")
    _check_probs(q, "q", atol)
    if p.dim() < 1 or p.shape != q.shape:
        raise ValueError(f"q: expected the shape of p {describe(p)} (one vocabulary), got {describe(q)}")


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The residual distribution ``norm(max(0, p - q))`` (Leviathan et al. 2023, Algorithm 1), (..., V).

    Where it has no mass (p <= q everywhere, i.e. p == q: a rejection cannot happen there) it falls
    back to p. p and q must be distributions of one shape (finite, >= 0, summing to 1 within 1e-4).
    """
    _check_pair(p, q)
    return _residual(p, q)


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """:func:`residual` without the checks (the verification loop's inputs are checked once)."""
    r = (p - q).clamp_min(0)  # (..., V)
    mass = r.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(torch.finfo(r.dtype).tiny), p)


def _uniform(shape, generator, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def verify(p: torch.Tensor, q: torch.Tensor | None, draft_tokens: torch.Tensor,
           generator: torch.Generator | None = None, *, atol: float = 1e-4, validate: bool = True) -> Verification:
    """One batched verification step of speculative sampling (Leviathan et al. 2023, Algorithm 1, lines 5-8).

    p (B, gamma + 1, V): the target's probabilities at the gamma + 1 scored positions; q (B, gamma, V):
    the draft's, or None for one-hot drafts (n-gram / prompt lookup), which is the same as q = one_hot(x):
    accept x with probability p(x), else draw from p with x removed; draft_tokens (B, gamma).
    p and q must be finite, non-negative and sum to 1 within ``atol`` at every position.
    Row b accepts x_i with probability ``min(1, p_i(x_i) / q_i(x_i))`` for i = 1, 2, ... up to the first
    rejection, draws ``next_token`` from ``residual(p_i, q_i)`` there, or from p_(gamma+1) when all are
    accepted. Uniforms come from ``generator``. ``validate=False`` skips the input checks.
    """
    if validate:
        _check_verify(p, q, draft_tokens, atol)
        check_generator(generator)
    B, G = draft_tokens.shape
    x = draft_tokens[..., None]  # (B, G, 1)
    if q is None:  # one-hot drafts
        q = torch.zeros_like(p[:, :G]).scatter_(-1, x, 1.0)  # (B, G, V)
    px = p[:, :G].gather(-1, x).squeeze(-1)  # (B, G): p_i(x_i)
    qx = q.gather(-1, x).squeeze(-1)  # (B, G): q_i(x_i) > 0
    u = _uniform((B, G), generator, p.device)  # (B, G)
    accepted = u * qx < px  # P(accept) = min(1, p/q), without dividing
    n = accepted.long().cumprod(dim=-1).sum(dim=-1)  # (B,): length of the leading run of acceptances
    rows = torch.arange(B, device=p.device)
    q_next = F.pad(q, (0, 0, 0, 1))[rows, n]  # (B, V): q_n, or zeros at the bonus position
    next_dist = _residual(p[rows, n], q_next)  # (B, V): norm(max(0, p_n - q_n)), = p_(gamma+1) for the bonus
    return Verification(n, sample_probs(next_dist, generator))


def verify_greedy(target_tokens: torch.Tensor, draft_tokens: torch.Tensor) -> Verification:
    """Greedy verification by exact match: accept the longest prefix of the drafts (B, gamma) that
    equals the target's argmaxes target_tokens (B, gamma + 1); the next token is the target's argmax at
    the first mismatch, or its bonus argmax when everything matched. Equals greedy decoding of the target."""
    B, G = _check_tokens(draft_tokens, "draft_tokens")
    if not isinstance(target_tokens, torch.Tensor) or target_tokens.dtype != torch.long \
            or target_tokens.shape != (B, G + 1):
        raise ValueError(f"target_tokens: expected a torch.long tensor of shape (batch, gamma + 1) = ({B}, {G + 1}), "
                         f"got {describe(target_tokens)}")
    if bool((target_tokens < 0).any()):
        raise ValueError("target_tokens: token ids must be >= 0")
    n = (target_tokens[:, :G] == draft_tokens).long().cumprod(dim=-1).sum(dim=-1)  # (B,)
    return Verification(n, target_tokens.gather(1, n[:, None]).squeeze(1))


def _verify_one(p: torch.Tensor, q: torch.Tensor | None, x: torch.Tensor, generator) -> tuple[int, torch.Tensor]:
    """:func:`verify` for one sequence with few tensor ops (each costs microseconds on a CPU, more
    right after a large forward pass has flushed the caches): p (g + 1, V), q (g, V) or None, x (g,).
    The same law: the acceptances compare ``u q(x) < p(x)``; the next token is drawn from the residual
    (or the bonus distribution) as an exponential race, ``argmax r / E`` with E ~ Exp(1) i.i.d.,
    which picks i with probability r_i / sum(r) (no normalization or CDF needed). Returns (k, y (1,))."""
    g = x.shape[0]
    px = p[:g].gather(1, x[:, None]).squeeze(1)  # (g,): p_i(x_i)
    u = _uniform((g,), generator, p.device)  # (g,)
    accepted = (u < px if q is None else u * q[:g].gather(1, x[:, None]).squeeze(1) < px).tolist()
    k = accepted.index(False) if False in accepted else g
    if k == g:  # every draft accepted: the bonus token from p_(gamma+1)
        r = p[g]
    elif q is None:  # one-hot draft: p with x_k removed
        r = p[k].clone()
        r[x[k]] = 0
    else:
        r = (p[k] - q[k]).clamp_min(0)  # (V,): proportional to the residual norm(max(0, p - q))
    gen_device = generator.device if generator is not None else p.device
    e = torch.empty(r.shape, device=gen_device).exponential_(generator=generator)  # (V,)
    e = e.clamp_min_(torch.finfo(e.dtype).tiny).to(p.device)  # E = 0 would give inf or nan
    y = (r / e).argmax()
    # r is zero everywhere (p = q, or p one-hot on x_k): a rejection cannot happen there; decided on the
    # device (torch.where), since reading r[y] would make the host wait for an accelerator
    y = torch.where(r[y] > 0, y, (p[k] / e).argmax())
    return k, y[None]


# --- theory (Leviathan et al. 2023, section 3) ----------------------------------------------------


def acceptance_rate(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """beta = sum_x min(p(x), q(x)) = 1 - TV(p, q): the probability that a draft x ~ q is accepted
    (Leviathan et al. 2023, Definition 3.1 and Lemma 3.3). p, q (..., V) -> (...): distributions of one
    shape (finite, >= 0, summing to 1 within 1e-4)."""
    _check_pair(p, q)
    return torch.minimum(p, q).sum(dim=-1)


def _real_array(value, name: str, expected: str) -> np.ndarray:
    """``value`` as a float array if it holds real numbers (ints or floats, not bools), else ValueError."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, RuntimeError):
        a = np.asarray(None)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return a.astype(float)


def _check_alpha(alpha) -> np.ndarray:
    a = _real_array(alpha, "alpha", "acceptance rates in [0, 1]")
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"alpha: expected acceptance rates in [0, 1], got {alpha!r}")
    return a


def _check_gamma(gamma, minimum: int = 0) -> np.ndarray:
    g = np.asarray(gamma)
    if g.dtype == bool or not np.issubdtype(g.dtype, np.integer) or np.any(g < minimum):
        raise ValueError(f"gamma: expected integers >= {minimum}, got {gamma!r}")
    return g


def _scalar(x):
    return float(x) if np.ndim(x) == 0 else x


def expected_tokens(alpha, gamma):
    """Expected tokens per target call, ``(1 - alpha^(gamma+1)) / (1 - alpha)`` (Leviathan et al. 2023,
    eq. 1), gamma + 1 at alpha = 1; assumes i.i.d. acceptance with rate alpha. Broadcasts over arrays;
    gamma = 0 is plain decoding (one token)."""
    a, g = _check_alpha(alpha), _check_gamma(gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(a == 1, g + 1.0, (1 - a ** (g + 1)) / np.where(a == 1, 1.0, 1 - a))
    return _scalar(e)


def speedup(alpha, gamma, c, verify_cost=None):
    """Expected walltime improvement over plain decoding, ``E[tokens] / (gamma c + v)`` (Leviathan et al.
    2023, Theorem 3.8, with v = 1).

    c: cost of one draft step relative to one target step. ``verify_cost`` refines the model with v, the
    cost of one target pass over gamma + 1 positions relative to one target step (on a CPU it exceeds 1):
    a number, an array broadcasting with gamma, or a function of gamma.
    """
    c_arr = _real_array(c, "c", "a finite cost ratio >= 0")
    if not np.all((c_arr >= 0) & np.isfinite(c_arr)):
        raise ValueError(f"c: expected a finite cost ratio >= 0, got {c!r}")
    g = _check_gamma(gamma)
    v = 1.0 if verify_cost is None else verify_cost(g) if callable(verify_cost) else verify_cost
    v = _real_array(v, "verify_cost", "positive finite costs")
    if not np.all((v > 0) & np.isfinite(v)):
        raise ValueError(f"verify_cost: expected positive finite costs, got {verify_cost!r}")
    return _scalar(expected_tokens(alpha, g) / (g * c_arr + v))


def optimal_gamma(alpha: float, c: float, max_gamma: int = 64, verify_cost=None) -> int:
    """The gamma in [1, max_gamma] that maximizes :func:`speedup` (Leviathan et al. 2023, section 3.4)."""
    int_at_least(max_gamma, "max_gamma", 1)
    gammas = np.arange(1, max_gamma + 1)
    return int(gammas[np.argmax(speedup(alpha, gammas, c, verify_cost))])


# --- generation ---------------------------------------------------------------------------------


@dataclass
class SpecStats:
    """What one speculative generation did. ``accepted[s]`` and ``drafted[s]`` count the drafts of step
    s; ``betas`` holds beta = sum min(p, q) at every draft position the verifier examined (the accepted
    ones and the first rejected one), so its mean is comparable with :attr:`acceptance_rate`.
    ``target_calls`` counts verification passes (the prompt's prefill is not counted); ``draft_calls``
    the drafter's forward passes; ``wall_time`` is in seconds, prefill included, of which ``draft_time``
    was spent in the drafter's proposals and ``target_time`` in the target's passes (prefill included):
    the rest is verification and bookkeeping. Comparing them with step costs measured in isolation
    shows what a cost model leaves out (on a CPU, a pass right after another model's is slower).
    Multi-draft generation (:func:`arlib.decoding.spectr.spectr_generate`) also records in ``candidates`` how many
    drafts were alive at each position it examined, and stores in ``betas`` the multi-draft rule's
    acceptance probability there instead of a single draft's beta; ``scored`` holds, per step, the number
    of positions the target scored (k (gamma + 1) rows, or the token tree's size with ``tree=True``).
    ``asked`` holds, per step, the draft length the chain decoders asked for (the schedule's gamma, capped by
    the tokens still wanted): ``drafted`` may be shorter (a drafter's context, a confidence stop)."""

    accepted: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)
    target_calls: int = 0
    draft_calls: int = 0
    new_tokens: int = 0
    wall_time: float = 0.0
    draft_time: float = 0.0
    target_time: float = 0.0

    def __post_init__(self):
        for name in ("accepted", "drafted", "asked", "betas", "candidates", "scored"):
            if not isinstance(getattr(self, name), list):
                raise ValueError(f"{name}: expected a list, got {type(getattr(self, name)).__name__}")
        for name in ("target_calls", "draft_calls", "new_tokens"):
            int_at_least(getattr(self, name), name, 0)
        for name in ("wall_time", "draft_time", "target_time"):
            number_in(getattr(self, name), name, 0, expected="a number of seconds >= 0")

    @property
    def steps(self) -> int:
        return len(self.accepted)

    @property
    def mean_accepted(self) -> float:
        return sum(self.accepted) / max(1, self.steps)

    @property
    def tokens_per_call(self) -> float:
        """Generated tokens per target call: compare with :func:`expected_tokens`."""
        return self.new_tokens / max(1, self.target_calls)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / examined drafts: the estimate of alpha under i.i.d. acceptance (a rejection ends a step)."""
        examined = sum(min(a + 1, d) for a, d in zip(self.accepted, self.drafted))
        return sum(self.accepted) / max(1, examined)


def _check_target(target) -> None:
    """The target must look like an :class:`arlib.text.gpt.GPT`: a config, a KV cache, parameters."""
    if not all(hasattr(target, a) for a in ("config", "new_cache", "parameters")):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")


def _check_draft(draft, vocab_size: int) -> None:
    """A drafter's first proposal: (1, g) token ids in the target's vocabulary, and q (1, g, V) of that vocabulary."""
    tokens, probs = draft.tokens, draft.probs
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 2 \
            or (tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size)):
        raise ValueError(f"drafter: proposed {describe(tokens)} tokens, not (1, g) ids in the target's vocabulary "
                         f"[0, {vocab_size})")
    if probs is not None and (not isinstance(probs, torch.Tensor) or probs.shape != (*tokens.shape, vocab_size)):
        raise ValueError(f"drafter: its distributions q have shape {describe(probs)}, not (1, g, V) over the "
                         f"target's vocabulary of V = {vocab_size} tokens")


SCHEDULES = ("fixed", "heuristic")


def _check_schedule(schedule) -> str:
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    return schedule


def _next_gamma(schedule: str, gamma: int, drafted: int, accepted: int) -> int:
    """The draft length of the next step. ``"heuristic"`` is Hugging Face's schedule of assisted generation
    (transformers 5.24, ``AssistedCandidateGenerator.update_candidate_strategy``): +2 when every drafted token
    was accepted, else -1, never below 1. A step without drafts leaves it unchanged (see speculative_generate)."""
    if schedule == "fixed" or drafted == 0:
        return gamma
    return gamma + 2 if accepted == drafted else max(1, gamma - 1)


def _verify_step(logits: torch.Tensor, x: torch.Tensor, q: torch.Tensor | None, options: SamplingOptions,
                 generator, check: bool, betas: list | None) -> tuple[int, torch.Tensor]:
    """One chain step's decision from the target's logits (1, g + 1, V) at the last decided token and the
    drafts x (1, g), drawn from q (1, g, V) (None: one-hot drafts): (k accepted, next token y (1,)).
    Greedy: exact match; no drafts: a plain target step; else :func:`_verify_one`, with the inputs checked
    when ``check`` and beta appended to ``betas`` (a tensor per step) at the examined drafts."""
    g = x.shape[-1]
    if options.greedy:
        k, y = verify_greedy(logits.argmax(dim=-1), x) if g else (0, logits[:, 0].argmax(dim=-1))
        return int(k), y
    if g == 0:  # nothing to verify: a plain target step
        return 0, sample_probs(options.probs(logits[:, 0]), generator)
    p = options.probs(logits)  # (1, g + 1, V)
    if check:  # the first verification's inputs (draft vocabulary, ...); later ones are trusted
        _check_verify(p, q, x, 1e-4)
    k, y = _verify_one(p[0], None if q is None else q[0], x[0], generator)
    if betas is not None:  # beta at the accepted drafts and the first rejected one
        examined = min(k + 1, g)
        q = q if q is not None else F.one_hot(x, p.shape[-1]).to(p.dtype)
        betas.append(torch.minimum(p[0, :examined], q[0, :examined]).sum(-1))  # acceptance_rate
    return k, y


def _record_step(record: SpecStats, asked: int, g: int, k: int, calls: int) -> None:
    """Count one chain step: ``asked`` drafts asked for, g proposed in ``calls`` draft passes, k accepted."""
    record.accepted.append(k)
    record.drafted.append(g)
    record.asked.append(asked)
    record.target_calls += 1
    record.draft_calls += calls


def _finish(record: SpecStats, betas: list, out: torch.Tensor, prompt: torch.Tensor, start: float, stats: bool):
    """A chain decoder's result: out (1, T + N) shaped like the prompt, with the record completed, or alone."""
    if betas:
        record.betas += torch.cat(betas).tolist()  # read back once, after the loop
    record.new_tokens = out.shape[1] - prompt.shape[-1]
    record.wall_time = time.perf_counter() - start
    tokens = out[0] if prompt.dim() == 1 else out
    return (tokens, record) if stats else tokens


@torch.no_grad()
def speculative_generate(target, drafter: Drafter, prompt: torch.Tensor, max_new_tokens: int, gamma: int, *,
                         generator: torch.Generator | None = None, temperature: float = 1.0,
                         top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                         greedy: bool = False, schedule: str = "fixed", stats: bool = True):
    """Continue ``prompt`` (T,) or (1, T) by ``max_new_tokens`` tokens with speculative decoding
    (Leviathan et al. 2023, Algorithm 1, repeated): ``(tokens, SpecStats)``, or the tokens alone with
    ``stats=False``. Batch size 1.

    The output has the law of :func:`arlib.text.sampling.generate` on ``target`` with the same sampling options
    (which apply to the draft as well), and with ``greedy=True`` the same tokens. The target keeps a KV
    cache of every token but the last; each step runs it once over that token and the g <= gamma drafts,
    crops the cache to the accepted prefix and appends the accepted drafts and one more token. A step
    with no drafts (a drafter may propose none) is a plain target step. Drafts are capped so that the
    output has exactly ``max_new_tokens`` new tokens; ``T + max_new_tokens`` must fit the target's context.

    ``schedule`` sets the draft length asked for at each step (recorded in ``SpecStats.asked``). ``"fixed"``:
    gamma every step. ``"heuristic"``: Hugging Face assisted generation's schedule, as in transformers 5.24.0
    (``num_assistant_tokens_schedule="heuristic"``, ``AssistedCandidateGenerator.update_candidate_strategy``):
    gamma is the *initial* length (HF's ``num_assistant_tokens``); after each verification it grows by 2 if
    every drafted token was accepted, else shrinks by 1, never below 1; there is no maximum (as in HF), only
    the cap by the tokens still wanted. As there, "every drafted token" means the g actually proposed, which
    may be fewer than asked (a confidence stop: ``ModelDrafter(confidence_stop=...)``). Two details differ
    from HF: the length restarts at gamma on every call (HF's ``"heuristic_transient"``; plain
    ``"heuristic"`` keeps it in the assistant's config across calls), and a step with no drafts (an n-gram
    drafter with no match) leaves it unchanged, where HF's rule would count it as all accepted. The schedule
    only changes how many drafts are proposed, so the output law is unchanged.
    """
    _check_target(target)
    if not isinstance(drafter, Drafter):
        raise TypeError(f"drafter: expected an arlib.decoding.drafters.Drafter, got {type(drafter).__name__}")
    check_generator(generator)
    T = _check_prompt(prompt, max_new_tokens, target.config)
    int_at_least(gamma, "gamma", 1)
    _check_schedule(schedule)
    options = SamplingOptions(temperature, top_k, top_p, min_p, greedy)
    draft_config = getattr(getattr(drafter, "model", None), "config", None)  # a ModelDrafter's model
    if draft_config is not None and draft_config.vocab_size != target.config.vocab_size:
        raise ValueError(f"drafter: its model has a vocabulary of {draft_config.vocab_size} tokens, the target "
                         f"{target.config.vocab_size}")
    record, betas = SpecStats(), []  # betas: tensors read back once, after the loop (no host sync per step)
    start = time.perf_counter()
    device = next(target.parameters()).device
    out = torch.empty(1, T + max_new_tokens, dtype=torch.long, device=device)
    out[0, :T] = prompt.reshape(-1)
    n, end = T, T + max_new_tokens  # out[:, :n] is decided
    validated = False  # check the first verification's inputs (draft vocabulary, ...), then trust them
    ids_checked = False  # the same for the first drafts the target reads (greedy or not): ids and vocabulary
    was_training = target.training
    target.eval()
    drafter.reset()
    try:
        cache = target.new_cache(1)
        hidden = getattr(drafter, "uses_hidden", False)  # heads on the target's state: hand it over
        if T > 1:
            t0 = time.perf_counter()
            run = target(out[:, :T - 1], cache=cache, return_hidden=hidden)  # prefill: every token but the last
            if hidden:
                drafter.observe(run[1][-1][:, -1])  # (1, d): h at position T - 2
            record.target_time += time.perf_counter() - t0
        while n < end:
            asked = min(gamma, end - n - 1)  # never draft past the last token wanted
            t0 = time.perf_counter()
            draft: Draft = drafter.propose(out[:, :n], asked, options, generator)
            t1 = time.perf_counter()
            x, g = draft.tokens, draft.tokens.shape[-1]  # (1, g)
            if g > asked:
                raise ValueError(f"drafter: proposed {g} tokens, more than the {asked} asked for")
            if g and not ids_checked:  # the first drafts: the drafter's vocabulary must be the target's
                _check_draft(draft, target.config.vocab_size)
            out[:, n:n + g] = x  # tentatively: what the target scores (n + g < end, so it fits)
            logits = target(out[:, n - 1:n + g], cache=cache, return_hidden=hidden,
                            validate=not ids_checked)  # (1, g + 1, V)
            ids_checked = ids_checked or g > 0
            if hidden:
                logits, states = logits[0], logits[1][-1]  # states (1, g + 1, d)
            record.draft_time += t1 - t0
            record.target_time += time.perf_counter() - t1
            k, y = _verify_step(logits, x, draft.probs, options, generator, not validated, betas if stats else None)
            validated = validated or (g > 0 and not greedy)
            cache.crop(n + k)  # keep x_1 .. x_k; the next token y is fed at the next step
            out[:, n + k] = y  # x_1 .. x_k are in place already
            n += k + 1
            drafter.accept(k)
            if hidden:
                drafter.observe(states[:, k])  # (1, d): h at the position whose logits gave y
            _record_step(record, asked, g, k, draft.calls)
            gamma = _next_gamma(schedule, gamma, g, k)
    finally:
        target.train(was_training)
    return _finish(record, betas, out, prompt, start, stats)


@torch.no_grad()
def draft_cost(drafter: Drafter, target, prefix: torch.Tensor, gamma: int, repeats: int = 30,
               rounds: int = 3) -> float:
    """Seconds one ``drafter.propose(prefix, gamma)`` takes in steady state (the median of ``repeats``
    calls, the smallest of ``rounds`` rounds), sampling included. A stateful drafter is rolled back
    after each call as if nothing was accepted; a drafter that reads the target's hidden state is
    first shown it. Divide by gamma and the target's step time for the cost ratio c of the theory."""
    if not isinstance(drafter, Drafter):
        raise TypeError(f"drafter: expected an arlib.decoding.drafters.Drafter, got {type(drafter).__name__}")
    _check_target(target)
    token_ids(prefix, "prefix", dim=2, rows=1, expected="a (1, length >= 1) torch.long tensor",
              vocab_size=target.config.vocab_size)
    if prefix.shape[1] < 1:
        raise ValueError("prefix: expected at least one token")
    int_at_least(gamma, "gamma", 0)
    positive_int(repeats, "repeats")
    positive_int(rounds, "rounds")
    drafter.reset()
    if getattr(drafter, "uses_hidden", False):
        drafter.observe(target(prefix[:, :-1], return_hidden=True)[1][-1][:, -1])
    generator = torch.Generator(device=prefix.device).manual_seed(0)
    sync = torch.cuda.synchronize if prefix.device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(repeats + 3):
            sync()
            t0 = time.perf_counter()
            drafter.propose(prefix, gamma, SamplingOptions(), generator)
            sync()
            times.append(time.perf_counter() - t0)
            drafter.accept(0)
        best = min(best, float(np.median(times[3:])))
    return best


@torch.no_grad()
def step_costs(target, drafter: Drafter, prefix: torch.Tensor, gamma: int, repeats: int = 30,
               rounds: int = 3) -> dict[str, float]:
    """Seconds of the three parts of one speculative step at temperature 1, measured the way the loop
    runs them: ``drafter.propose`` of gamma drafts, the target's pass over the gamma + 1 positions, and
    the verification (probabilities, acceptance, the next token), one after the other, then both models
    rolled back to ``prefix`` (1, L) as if no draft had been accepted. Unlike costs measured one at a
    time, each part here finds the processor caches as the other parts leave them, as in generation.
    Medians of ``repeats`` steps, the smallest of ``rounds`` rounds: ``{"draft", "score", "verify"}``."""
    if not isinstance(drafter, Drafter):
        raise TypeError(f"drafter: expected an arlib.decoding.drafters.Drafter, got {type(drafter).__name__}")
    _check_target(target)
    if not isinstance(prefix, torch.Tensor) or prefix.dtype != torch.long or prefix.dim() != 2 \
            or prefix.shape[0] != 1 or prefix.shape[1] < 2:
        raise ValueError(f"prefix: expected a (1, length >= 2) torch.long tensor, got {describe(prefix)}")
    ids_in_vocab(prefix, "prefix", target.config.vocab_size)
    int_at_least(gamma, "gamma", 1)
    positive_int(repeats, "repeats")
    positive_int(rounds, "rounds")
    L, options = prefix.shape[1], SamplingOptions()
    if L + gamma > target.config.block_size:
        raise ValueError(f"gamma: prefix ({L}) + gamma ({gamma}) exceeds the target's context")
    cache, tokens = target.new_cache(1), prefix.new_empty(1, L + gamma)
    tokens[:, :L] = prefix
    drafter.reset()
    prefill = target(prefix[:, :-1], cache=cache, return_hidden=True)
    if getattr(drafter, "uses_hidden", False):
        drafter.observe(prefill[1][-1][:, -1])
    generator = torch.Generator(device=prefix.device).manual_seed(0)
    sync = torch.cuda.synchronize if prefix.device.type == "cuda" else (lambda: None)
    best = {"draft": float("inf"), "score": float("inf"), "verify": float("inf")}
    for _ in range(rounds):
        laps = {key: [] for key in best}
        for _ in range(repeats + 3):
            sync()
            t0 = time.perf_counter()
            draft = drafter.propose(prefix, gamma, options, generator)
            g = draft.tokens.shape[1]
            tokens[:, L:L + g] = draft.tokens
            sync()
            t1 = time.perf_counter()
            logits = target(tokens[:, L - 1:L + g], cache=cache)  # (1, g + 1, V)
            sync()
            t2 = time.perf_counter()
            if g:
                _verify_one(options.probs(logits)[0], None if draft.probs is None else draft.probs[0],
                            draft.tokens[0], generator)
            sync()
            t3 = time.perf_counter()
            cache.crop(L - 1)
            drafter.accept(0)
            for key, lap in zip(best, (t1 - t0, t2 - t1, t3 - t2)):
                laps[key].append(lap)
        best = {key: min(best[key], float(np.median(laps[key][3:]))) for key in best}
    return best

# --- LayerSkip: self-speculative decoding with one cache ---------------------------------------------
#
# LayerSkip's self-speculative decoding: draft with the target's first layers, verify with the rest, one cache.
#
# Elhoushi et al. (2024), the section on inference with self-speculative decoding (its parts: self-drafting,
# self-verification, reusing the cache). The draft is the target's first E blocks and an exit head; the
# verification is the target itself. Drafting computes, for every position it reads, the keys and values of
# layers 0 .. E-1 and the residual stream after block E-1; the verification then needs only blocks E .. L-1
# for those positions. LayerSkip shares three things between the stages:
#
# - the weights of layers 0 .. E-1 (the draft *is* the target's first layers, as with
#   :class:`arlib.decoding.draft_heads.EarlyExitModel`);
# - the KV cache of layers 0 .. E-1 ("single KV cache"): the keys and values the draft wrote are the ones the
#   verification attends to, and after verification the accepted drafts' entries stay;
# - the compute of layers 0 .. E-1 ("exit query cache"): the layer-E states of the drafted positions are kept
#   and stacked as the verification's input to block E.
#
# So each position goes through each block once, unless it is a rejected draft. Compare
# ``ModelDrafter(EarlyExitModel(...))`` in :func:`arlib.decoding.speculative.speculative_generate`, where the draft
# keeps its own cache and the target's pass recomputes layers 0 .. E-1 over the drafts.


def _embed(target: GPT, idx: torch.Tensor, start: int) -> torch.Tensor:
    """Token and position embeddings (1, T, d) of ids idx (1, T) at positions start .. start + T - 1."""
    return target.drop(target.wte(idx) + target.wpe.weight[start:start + idx.shape[1]])


def _blocks(target: GPT, x: torch.Tensor, cache: KVCache, first: int, last: int) -> torch.Tensor:
    """Blocks first .. last - 1 of the target on x (1, T, d), at the positions after what ``cache`` holds; the
    cache keeps those layers only (cache layer = block - first)."""
    T = x.shape[1]
    mask = causal_mask(T, cache.length, x.device) if T > 1 else None  # once for all the layers
    for layer in range(first, last):
        x = target.h[layer](x, cache, layer - first, mask)
    cache.advance(T)
    return x


@torch.no_grad()
def layerskip_generate(target: GPT, exits: ExitHeads, exit_layer: int, prompt: torch.Tensor, max_new_tokens: int,
                       gamma: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                       greedy: bool = False, schedule: str = "fixed", stats: bool = True):
    """Continue ``prompt`` (T,) or (1, T) by ``max_new_tokens`` tokens with LayerSkip's self-speculative
    decoding (Elhoushi et al. 2024, self-drafting and self-verification): ``(tokens, SpecStats)``, or the
    tokens alone with ``stats=False``.
    Batch size 1.

    Self-drafting: the last decided token, then each draft x_1 .. x_(g-1), goes through blocks 0 .. E-1 of
    ``target`` (E = ``exit_layer``) and the exit head ``exits.heads[E - 1]``; x_i is drawn from q_i, the head's
    distribution under the sampling options (Gumbel-max, as :class:`arlib.decoding.drafters.ModelDrafter`).
    Self-verification: blocks E .. L-1 run once over the layer-E states of the g + 1 positions, then ``ln_f``
    and the tied unembedding give p; the chain's verification (Leviathan et al. 2023,
    Algorithm 1) accepts a prefix and draws the next token, so the output has the law of
    :func:`arlib.text.sampling.generate` on ``target`` with the same options, and with ``greedy=True`` the same
    tokens. What is shared (see the module): the early layers' KV cache and their compute.

    Two caches play LayerSkip's single one: ``early`` holds blocks 0 .. E-1, ``late`` blocks E .. L-1 (one
    ``length`` per cache). Between steps both hold every decided token but the last; while drafting the early
    one runs ahead by the drafts. Both are cropped to the accepted prefix after each verification.

    Deviations from the paper: the exit head is a separate distilled head
    (:class:`arlib.decoding.draft_heads.ExitHeads`), where LayerSkip trains the model (layer dropout and an
    early-exit loss) so that its own final norm and LM head read every layer; the paper's evaluation is
    greedy, while here sampling is verified by speculative sampling with q the exit head's processed
    distribution (the reference implementation, facebookresearch/LayerSkip, samples the same way).
    ``schedule`` is :func:`arlib.decoding.speculative.speculative_generate`'s: ``"fixed"`` (gamma drafts per
    step, as the paper) or ``"heuristic"`` (Hugging Face's, gamma the initial length).
    Time: ``draft_time`` is the drafting loop, ``target_time`` the prefill and the verification passes (which
    include the last position's early layers: see the comment in the loop); ``draft_calls`` counts draft
    steps (one early pass each).
    """
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    config = target.config
    if not isinstance(exits, ExitHeads):
        raise TypeError(f"exits: expected arlib.decoding.draft_heads.ExitHeads, got {type(exits).__name__}")
    width, vocab = exits.heads[0].proj.in_features, exits.heads[0].proj.out_features
    if len(exits.heads) != config.n_layer - 1 or (width, vocab) != (config.n_embd, config.vocab_size):
        raise ValueError(f"exits: expected ExitHeads for a {config.n_layer}-layer target of width {config.n_embd} "
                         f"and {config.vocab_size} tokens, got {len(exits.heads)} heads of width {width} and "
                         f"{vocab} tokens")
    E = int_in_range(exit_layer, "exit_layer", 1, config.n_layer - 1)
    check_generator(generator)
    T = _check_prompt(prompt, max_new_tokens, config)
    int_at_least(gamma, "gamma", 1)
    _check_schedule(schedule)
    options = SamplingOptions(temperature, top_k, top_p, min_p, greedy)
    L, V, head = config.n_layer, config.vocab_size, exits.heads[E - 1]
    record, betas = SpecStats(), []  # betas: tensors read back once, after the loop
    start = time.perf_counter()
    weight = target.wte.weight
    device = weight.device
    out = torch.empty(1, T + max_new_tokens, dtype=torch.long, device=device)
    out[0, :T] = prompt.reshape(-1).to(device)
    n, end = T, T + max_new_tokens  # out[:, :n] is decided
    validated = False  # the first sampled verification's inputs are checked, later ones trusted
    modes = (target.training, exits.training)
    target.eval(), exits.eval()
    try:
        early = KVCache(replace(config, n_layer=E), 1, device=device, dtype=weight.dtype)  # blocks 0 .. E-1
        late = KVCache(replace(config, n_layer=L - E), 1, device=device, dtype=weight.dtype)  # blocks E .. L-1
        if T > 1:  # prefill: every token but the last, through both halves
            t0 = time.perf_counter()
            _blocks(target, _blocks(target, _embed(target, out[:, :T - 1], 0), early, 0, E), late, E, L)
            record.target_time += time.perf_counter() - t0
        while n < end:
            asked = min(gamma, end - n - 1)  # never draft past the last token wanted
            t0 = time.perf_counter()
            # self-drafting: out[n-1], x_1 .. x_(g-1) at positions n-1 .. n+g-2 through blocks 0 .. E-1; their
            # layer-E states are kept for the verification (LayerSkip's exit query cache)
            noise = None if greedy or asked == 0 else gumbel_noise((asked, V), generator, device)  # (g, V)
            token, states, zs, xs = out[:, n - 1:n], [], [], []
            for i in range(asked):
                h = _blocks(target, _embed(target, token, n - 1 + i), early, 0, E)  # (1, 1, d)
                states.append(h)
                logits = head(h[:, -1])  # (1, V): the exit head
                if greedy:
                    token = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
                else:
                    zs.append(options.process(logits))
                    token = (zs[-1] + noise[i]).argmax(dim=-1, keepdim=True)  # (1, 1): x_i ~ softmax(z_i)
                xs.append(token)
            g = len(xs)
            x = torch.cat(xs, dim=1) if g else out.new_empty(1, 0)  # (1, g)
            q = torch.stack(zs, dim=1).softmax(dim=-1) if zs else None  # (1, g, V)
            out[:, n:n + g] = x  # tentatively: what the verification scores
            t1 = time.perf_counter()
            # self-verification. Position n-1+g (x_g, or the last decided token when g = 0) has not been through
            # blocks 0 .. E-1: drafting drew x_g but never fed it. It runs them here, in the verification pass,
            # rather than in the last draft step, whose exit head would be computed for nothing.
            last = _blocks(target, _embed(target, out[:, n - 1 + g:n + g], n - 1 + g), early, 0, E)  # (1, 1, d)
            h = _blocks(target, torch.cat(states + [last], dim=1), late, E, L)  # (1, g + 1, d): positions n-1 ..
            logits = F.linear(target.ln_f(h), weight)  # (1, g + 1, V): the tied head, as GPT.forward
            record.draft_time += t1 - t0
            record.target_time += time.perf_counter() - t1
            k, y = _verify_step(logits, x, q, options, generator, not validated, betas if stats else None)
            validated = validated or (g > 0 and not greedy)
            early.crop(n + k)  # both caches: every decided token but the last (y, fed at the next step)
            late.crop(n + k)
            out[:, n + k] = y
            n += k + 1
            _record_step(record, asked, g, k, g)  # one early pass per draft
            gamma = _next_gamma(schedule, gamma, g, k)
    finally:
        target.train(modes[0]), exits.train(modes[1])
    return _finish(record, betas, out, prompt, start, stats)
