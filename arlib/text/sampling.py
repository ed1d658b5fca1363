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
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlib.validate import ids_in_vocab, int_at_least, number_in, probability, token_ids

# --- checks -------------------------------------------------------------------------------------


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] == 0 or not logits.is_floating_point():
        raise ValueError(f"{name}: expected a floating (batch, vocab) tensor, got {tuple(logits.shape)} {logits.dtype}")


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
    int_at_least(k, "top_k", 1)
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

    The uniforms come from ``generator`` (on its own device) so that draws are reproducible on any
    device; a token with zero probability is never drawn.
    """
    _check_logits(probs, "probs")
    cdf = probs.to(_wide(probs.device)).cumsum(dim=-1)  # (B, V)
    _check_mass(cdf[:, -1])
    return _invert_cdf(cdf, generator)


def _check_mass(mass: torch.Tensor) -> None:
    """The rows' total probabilities (any shape) must all be positive (False for NaN): a host sync, so
    :func:`generate` stacks its steps' masses and checks them once, after its loop."""
    if not bool((mass > 0).all()):
        raise ValueError("probs: every row needs positive mass")


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


def draw(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw from ``softmax(logits)`` per row of logits (..., V): token ids (...).

    The inverse CDF at one uniform per row, as :func:`sample_probs`, but without its value check, so
    that it never makes the host wait for an accelerator: the inner loop of the image samplers
    (:mod:`arlib.vision.generators`) calls it once per pass. One uniform per row is also much cheaper than
    Gumbel noise per logit when a pass draws many tokens (49 x 256 logits: about 8x on a CPU).
    Tokens at ``-inf`` are never drawn.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        raise ValueError("logits: expected a floating tensor of shape (..., V)")
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    cdf = flat.to(_wide(flat.device)).softmax(dim=-1).cumsum(dim=-1)  # (N, V)
    return _invert_cdf(cdf, generator).view(logits.shape[:-1])


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """i.i.d. standard Gumbel noise ``-log(E)``, E ~ Exp(1), of the given shape, drawn on the generator's
    device (or ``device`` without a generator) and returned on ``device``. ``argmax(logits + noise)``
    is a draw from ``softmax(logits)`` (the Gumbel-max trick): the drafters use it to draw many tokens at once."""
    gen_device = generator.device if generator is not None else device
    e = torch.empty(shape, device=gen_device).exponential_(generator=generator)
    return e.clamp_min_(torch.finfo(e.dtype).tiny).log_().neg_().to(device)  # E = 0 would give +inf


def sample(logits: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
           greedy: bool = False) -> torch.Tensor:
    """Draw one token per row from processed ``logits`` (B, V): token ids (B,).

    ``greedy=True`` takes the argmax and ignores the other arguments.
    """
    _check_logits(logits)
    if greedy:
        return logits.argmax(dim=-1)
    logits = process_logits(logits, temperature, top_k, top_p, min_p)
    return sample_probs(logits.float().softmax(dim=-1), generator)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` in nats of ``softmax(logits)``, per row: (B, V) -> (B,).

    Accepts any leading shape (..., V); tokens at ``-inf`` contribute 0.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        raise ValueError("logits: expected a floating tensor of shape (..., V)")
    logp = logits.float().log_softmax(dim=-1)
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
    token_ids(prompt, "prompt", dim=(1, 2), expected="a (batch, time) or (time,) torch.long tensor")
    int_at_least(max_new_tokens, "max_new_tokens", 0)
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

    masses = []  # each step's row masses, checked once after the loop: no host sync per token

    def pick(logits):  # (B, V) -> (B,): the draw of sample() with its mass check deferred
        if greedy:
            return logits.argmax(dim=-1)
        probs = process_logits(logits, temperature, top_k, top_p, min_p).float().softmax(dim=-1)
        cdf = probs.to(_wide(probs.device)).cumsum(dim=-1)  # (B, V)
        masses.append(cdf[:, -1])
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
    if masses:
        _check_mass(torch.stack(masses))
    return out[0] if squeeze else out


def inverse_cdf_index(weights: np.ndarray, u: float) -> int:
    """Index drawn with probability proportional to ``weights`` (V,) >= 0 (not necessarily normalized),
    from one uniform ``u`` in [0, 1): the smallest i with cumsum(weights)[i] > u * sum. The verification
    loops of :mod:`arlib.decoding.spectr` and :mod:`arlib.vision.jacobi` use it on numpy rows, where one call beats the
    dozen tensor operations of a torch draw."""
    cdf = np.cumsum(weights)
    i = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    while i >= len(weights) or weights[i] <= 0:  # u * total rounded onto the last bin's edge
        i -= 1
    return i
