"""Decoding an autoregressive model: logit processors, sampling, and generation with a KV cache.

A processor maps logits (B, V) to logits (B, V) with the tokens it rules out set to ``-inf``; the
sampler draws one token per row from the softmax of what remains. The processors, in the order
:func:`sample` applies them:

- :func:`temperature` divides the logits by ``t`` (``t < 1`` sharpens, ``t > 1`` flattens);
- :func:`top_k` keeps the ``k`` most likely tokens (Fan et al. 2018);
- :func:`top_p` keeps the smallest set of most likely tokens whose mass reaches ``p``: nucleus
  sampling (Holtzman et al. 2020, eq. 2-3);
- :func:`min_p` keeps tokens whose probability is at least ``min_p`` times the top token's
  (Nguyen et al. 2025).

:func:`generate` decodes with or without the KV cache; both give the same tokens for the same
generator seed, the cache only removes the recomputation of past keys and values.

Values: the processors check the shape and their options but pass NaN and ``+inf`` logits through (they
run inside decoding loops, where a scan of every logit would make the host wait for an accelerator); the
samplers (:func:`sample`, :func:`sample_probs`, :func:`draw`, :func:`generate`) and :func:`entropy` refuse
them with a ``ValueError`` that says which: NaN, ``+inf``, a row with every logit at ``-inf``, or, for
probabilities, a negative entry or a row without mass.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlib.validate import generator as check_generator
from arlib.validate import ids_in_vocab, int_at_least, is_int, number_in, probability, token_ids

# --- checks -------------------------------------------------------------------------------------


def _check_logits(logits: torch.Tensor, name: str = "logits", *, any_rank: bool = False) -> None:
    """Type, shape and dtype of a (batch, vocab) floating tensor ((..., vocab) with ``any_rank``); values
    are not read (no host sync)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    shape_ok = logits.dim() >= 1 if any_rank else logits.dim() == 2
    if not shape_ok or logits.shape[-1] == 0 or not logits.is_floating_point():
        what = "(..., vocab)" if any_rank else "(batch, vocab)"
        raise ValueError(f"{name}: expected a floating {what} tensor with vocab >= 1, "
                         f"got {tuple(logits.shape)} {logits.dtype}")


def _logits_error(logits: torch.Tensor, name: str = "logits") -> ValueError:
    """Why ``logits`` (..., V) give no distribution: NaN, +inf, or a row with every logit at -inf. Called
    once a cheap check has failed, so its scans cost nothing on the valid path."""
    if bool(torch.isnan(logits).any()):
        return ValueError(f"{name}: contains NaN")
    if bool(torch.isposinf(logits).any()):
        return ValueError(f"{name}: contains +inf (softmax is undefined; use a large finite logit instead)")
    if logits.numel() and bool(torch.isneginf(logits).all(dim=-1).any()):
        return ValueError(f"{name}: a row has every logit at -inf (no token can be drawn)")
    return ValueError(f"{name}: gives no valid distribution (its softmax overflows)")


def _probs_error(probs: torch.Tensor, name: str = "probs") -> ValueError:
    """Why ``probs`` (B, V) are no (unnormalized) distribution: NaN, inf, a negative entry, a row of zeros."""
    if bool(torch.isnan(probs).any()):
        return ValueError(f"{name}: contains NaN")
    if bool(torch.isinf(probs).any()):
        return ValueError(f"{name}: contains inf")
    if bool((probs < 0).any()):
        return ValueError(f"{name}: contains negative entries (probabilities are >= 0)")
    return ValueError(f"{name}: every row needs positive mass (a row sums to 0)")


# --- logit processors: (B, V) -> (B, V) ------------------------------------------------------------


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Logits divided by the temperature ``t > 0`` (greedy decoding, the limit ``t -> 0``, is separate)."""
    _check_logits(logits)
    number_in(t, "temperature", 0, math.inf, bounds="()",
              expected="a finite number > 0 (use greedy=True for t = 0)")
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (tokens tied with the k-th are kept too)."""
    _check_logits(logits)
    k = int_at_least(k, "top_k", 1)
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability mass reaches ``p``; the top token is always kept."""
    _check_logits(logits)
    number_in(p, "top_p", 0, 1, bounds="(]")
    if p == 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the set already reached p without this token
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Min-p filtering (Nguyen et al. 2025): keep tokens with ``prob >= p * max prob``.

    In log space the rule reads ``logit >= max logit + log p``: the softmax normaliser cancels.
    Order: :func:`process_logits` (so :func:`sample` and :func:`generate`) applies min-p *after* the
    temperature, as the paper's reference implementation (Hugging Face's ``MinPLogitsWarper``, run after
    ``TemperatureLogitsWarper``) and vLLM do: at temperature ``t`` the rule keeps
    ``logit >= max logit + t log p``, so a hotter distribution keeps more tokens. (llama.cpp's default
    chain divides by the temperature last, which makes the kept set independent of ``t``.)
    """
    _check_logits(logits)
    probability(p, "min_p")
    if p == 0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(p)  # (B, 1)
    return logits.masked_fill(logits < threshold, -math.inf)


# The keyword arguments of ``sample`` and ``generate`` shadow the processors' names.
_temperature, _top_k, _top_p, _min_p = temperature, top_k, top_p, min_p


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """Apply temperature, then top-k, top-p and min-p (each only if given), as Hugging Face does."""
    _check_logits(logits)
    if temperature != 1.0:
        logits = _temperature(logits, temperature)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    if top_p is not None:
        logits = _top_p(logits, top_p)
    if min_p is not None:
        logits = _min_p(logits, min_p)
    return logits


# --- sampling -----------------------------------------------------------------------------------


def sample_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` (B, V) by inverting the CDF at a uniform: token ids (B,).

    ``probs`` need not be normalized (a row is drawn in proportion to its entries), but every entry must
    be finite and >= 0 and every row must have positive mass, else ``ValueError`` (one check per call).
    The uniforms come from ``generator`` (on its own device) so that draws are reproducible on any
    device; a token with zero probability is never drawn.
    """
    _check_logits(probs, "probs")
    check_generator(generator)
    cdf = probs.to(_wide(probs.device)).cumsum(dim=-1)  # (B, V)
    # one host sync: a NaN or inf makes a row's mass non-finite, a negative entry shows in the minimum
    if probs.shape[0] and not bool(_mass_ok(cdf[:, -1]) & (probs.min() >= 0)):
        raise _probs_error(probs)
    return _invert_cdf(cdf, generator)


def _mass_ok(mass: torch.Tensor) -> torch.Tensor:
    """Whether every row's total (any shape) is positive and finite (False for NaN), as a 0-d tensor: no
    host sync until it is read, so :func:`generate` stacks its steps' checks and reads them once."""
    return ((mass > 0) & (mass < math.inf)).all()


def _wide(device: torch.device) -> torch.dtype:
    """float64 for sums of probabilities, but float32 on mps, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _invert_cdf(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per row of an unnormalized CDF (N, V), the first index whose CDF exceeds u * total, u uniform from
    ``generator`` (on its own device): token ids (N,)."""
    device = generator.device if generator is not None else cdf.device
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=device).to(cdf.device)  # (N, 1)
    idx = torch.searchsorted(cdf, u.to(cdf.dtype) * cdf[:, -1:], right=True)
    return idx.squeeze(-1).clamp_max(cdf.shape[-1] - 1)


def draw(logits: torch.Tensor, generator: torch.Generator | None = None, *, validate: bool = True) -> torch.Tensor:
    """One draw from ``softmax(logits)`` per row of logits (..., V): token ids (...).

    The inverse CDF at one uniform per row, as :func:`sample_probs`; the inner loop of the image samplers
    (:mod:`arlib.vision.generators`) calls it once per pass. One uniform per row is also much cheaper than
    Gumbel noise per logit when a pass draws many tokens (49 x 256 logits: about 8x on a CPU).
    Tokens at ``-inf`` are never drawn. NaN, ``+inf`` or a row with every logit at ``-inf`` raise
    ``ValueError`` (one check of the rows' totals per call); ``validate=False`` skips that check, which
    makes the host wait for an accelerator, for loops that check their logits otherwise.
    """
    _check_logits(logits, any_rank=True)
    check_generator(generator)
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    cdf = flat.to(_wide(flat.device)).softmax(dim=-1).cumsum(dim=-1)  # (N, V)
    if validate and flat.shape[0] and not bool(_mass_ok(cdf[:, -1])):
        raise _logits_error(logits)
    return _invert_cdf(cdf, generator).view(logits.shape[:-1])


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """i.i.d. standard Gumbel noise ``-log(E)``, E ~ Exp(1), of the given shape, drawn on the generator's
    device (or ``device`` without a generator) and returned on ``device``. ``argmax(logits + noise)``
    is a draw from ``softmax(logits)`` (the Gumbel-max trick): the drafters use it to draw many tokens at once."""
    dims = (shape,) if is_int(shape) else tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else None
    if dims is None or not all(is_int(d) and d >= 0 for d in dims):
        raise ValueError(f"shape: expected an int or a tuple of ints >= 0, got {shape!r}")
    check_generator(generator)
    shape = tuple(int(d) for d in dims)
    gen_device = generator.device if generator is not None else device
    e = torch.empty(shape, device=gen_device).exponential_(generator=generator)
    return e.clamp_min_(torch.finfo(e.dtype).tiny).log_().neg_().to(device)  # E = 0 would give +inf


def sample(logits: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
           greedy: bool = False) -> torch.Tensor:
    """Draw one token per row from processed ``logits`` (B, V): token ids (B,).

    ``greedy=True`` takes the argmax and ignores the other arguments. NaN, ``+inf`` or a row with every
    logit at ``-inf`` raise ``ValueError`` (greedy or not).
    """
    _check_logits(logits)
    if greedy:
        if logits.shape[0] and not bool(torch.isfinite(logits.max(dim=-1).values).all()):  # NaN, +inf, all -inf
            raise _logits_error(logits)
        return logits.argmax(dim=-1)
    check_generator(generator)
    processed = process_logits(logits, temperature, top_k, top_p, min_p)
    cdf = processed.float().softmax(dim=-1).to(_wide(logits.device)).cumsum(dim=-1)  # (B, V)
    if logits.shape[0] and not bool(_mass_ok(cdf[:, -1])):
        raise _logits_error(logits)
    return _invert_cdf(cdf, generator)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` in nats of ``softmax(logits)``, per row: (B, V) -> (B,).

    Accepts any leading shape (..., V); tokens at ``-inf`` contribute 0. NaN, ``+inf`` or a row with every
    logit at ``-inf`` raise ``ValueError``.
    """
    _check_logits(logits, any_rank=True)
    logp = logits.float().log_softmax(dim=-1)
    if logits.numel() and not bool(torch.isfinite(logp.max(dim=-1).values).all()):
        raise _logits_error(logits)
    p = logp.exp()
    return torch.where(p > 0, -p * logp, torch.zeros_like(p)).sum(dim=-1)


# --- generation ---------------------------------------------------------------------------------


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             generator: torch.Generator | None = None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, greedy: bool = False) -> torch.Tensor:
    """Continue ``prompt`` (B, T) (or (T,), treated as batch 1) by ``max_new_tokens`` tokens: (B, T + N).

    ``use_cache=True`` runs the prompt once to fill the KV cache (prefill), then feeds one token per
    step; the whole output must fit the model's context (``T + N <= block_size``), else ``ValueError``.
    ``use_cache=False`` recomputes the full sequence at every step, cropped to its last
    ``block_size`` tokens: past the context the window slides, so there is no length limit.
    Both give the same tokens for the same ``generator`` state (up to float rounding ties).
    """
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not hasattr(config, "block_size") or not hasattr(config, "vocab_size"):
        raise TypeError(f"model: expected a GPT-like torch module with config.block_size and config.vocab_size, "
                        f"got {type(model).__name__}")
    token_ids(prompt, "prompt", dim=(1, 2), expected="a (batch, time) or (time,) torch.long tensor")
    max_new_tokens = int_at_least(max_new_tokens, "max_new_tokens", 0)
    check_generator(generator)
    squeeze = prompt.dim() == 1
    idx = prompt[None] if squeeze else prompt  # (B, T)
    B, T = idx.shape
    if T == 0:
        raise ValueError("prompt: expected at least one token")
    block_size = model.config.block_size
    if use_cache and T + max_new_tokens > block_size:
        raise ValueError(f"max_new_tokens: prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the context "
                         f"of {block_size} tokens; use fewer tokens or use_cache=False (sliding window)")
    if not greedy:  # check the options once, up front, rather than at the first step
        process_logits(torch.zeros(1, 1), temperature, top_k, top_p, min_p)

    checks = []  # each step's check of its logits (0-d bool tensors), read once after the loop: no host sync per token

    def pick(logits):  # (B, V) -> (B,): the draw of sample() with its value check deferred
        if greedy:
            checks.append(torch.isfinite(logits.max(dim=-1).values).all())  # NaN, +inf or a row all at -inf
            return logits.argmax(dim=-1)
        probs = process_logits(logits, temperature, top_k, top_p, min_p).float().softmax(dim=-1)
        cdf = probs.to(_wide(probs.device)).cumsum(dim=-1)  # (B, V)
        checks.append(_mass_ok(cdf[:, -1]))
        return _invert_cdf(cdf, generator)

    from arlib.text.gpt import GPT

    ids_in_vocab(idx, "prompt", model.config.vocab_size)  # once: the drawn tokens are in range by construction
    fast = {"validate": False} if isinstance(model, GPT) else {}  # so no pass re-checks its ids (a host sync)

    device = next(model.parameters()).device
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=device)
    out[:, :T] = idx
    was_training = model.training
    model.eval()
    try:
        if use_cache:
            cache = model.new_cache(B)
            logits = model(out[:, :T], cache=cache)[:, -1]  # prefill: (B, V)
            for t in range(T, T + max_new_tokens):
                out[:, t] = pick(logits)
                if t + 1 < T + max_new_tokens:
                    logits = model(out[:, t:t + 1], cache=cache, **fast)[:, -1]
        else:
            for t in range(T, T + max_new_tokens):
                window = out[:, max(0, t - block_size):t]  # (B, <= block_size)
                out[:, t] = pick(model(window, **fast)[:, -1])
    finally:
        model.train(was_training)
    if checks and not bool(torch.stack(checks).all()):
        step = int((~torch.stack(checks)).nonzero()[0, 0])
        raise ValueError(f"model: its logits at new token {step} are NaN, +inf or all -inf in a row "
                         f"(no distribution to draw from)")
    return out[0] if squeeze else out


def inverse_cdf_index(weights: np.ndarray, u: float) -> int:
    """Index drawn with probability proportional to ``weights`` (V,) >= 0 (not necessarily normalized),
    from one uniform ``u`` in [0, 1): the smallest i with cumsum(weights)[i] > u * sum. The verification
    loops of :mod:`arlib.decoding.spectr` and :mod:`arlib.vision.jacobi` use it on numpy rows, where one call beats the
    dozen tensor operations of a torch draw. Weights that are not a non-empty 1-D row of finite numbers
    >= 0 with a positive sum, or ``u`` outside [0, 1), raise ``ValueError``."""
    try:
        weights = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights: expected a 1-D array of numbers, got {type(weights).__name__}") from None
    if weights.ndim != 1 or weights.size == 0:
        raise ValueError(f"weights: expected a non-empty 1-D array, got shape {weights.shape}")
    number_in(u, "u", 0, 1, bounds="[)")
    cdf = np.cumsum(weights)
    total = cdf[-1]
    if not (0 < total < math.inf and weights.min() >= 0):  # NaN fails the first test
        what = ("contains NaN" if np.isnan(weights).any() else "contains inf" if np.isinf(weights).any()
                else "contains negative entries" if (weights < 0).any() else "sums to 0")
        raise ValueError(f"weights: expected finite weights >= 0 with a positive sum; {what}")
    i = int(np.searchsorted(cdf, u * total, side="right"))
    while i >= len(weights) or weights[i] <= 0:  # u * total rounded onto the last bin's edge
        i -= 1
    return i
