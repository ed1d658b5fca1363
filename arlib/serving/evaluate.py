"""The quality harness of chapter 7: what a compressed KV cache costs, measured against the full model.

:func:`cache_quality` decodes held-out text with teacher forcing through a compressed cache and compares
every step's next-token distribution q with the distribution p of the full model (one uncached forward
of the whole sequence). Per predicted position it records

- the NLL of the true next token under q and under p (their difference is what the cache costs);
- whether q and p have the same argmax (greedy decoding would pick the same token);
- the acceptance sum_x min(p(x), q(x)) = 1 - TV(p, q): the probability that a token drawn from q passes
  speculative decoding's test against p (Leviathan et al. 2023, Definition 3.1 and Lemma 3.3). It reads:
  if the model with the compressed cache drafted for the same model with its full cache, this fraction
  of drafts would be accepted, and the output would still follow p exactly.

``bytes_per_position`` is what the cache holds at the end, per row and per position seen. The summary
properties average over all positions; :meth:`CacheQuality.interval` bootstraps over sequences (the rows),
because positions within one sequence are correlated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from arlib.decoding.speculative import acceptance_rate
from arlib.text.gpt import KVCache
from arlib.text.ladder import bootstrap_interval
from arlib.text.lm import heldout_halves
from arlib.validate import describe, int_in_range, number_in, positive_int, token_ids

__all__ = ["CacheQuality", "cache_quality", "full_logits", "heldout_sequences", "METRICS"]

METRICS = ("nll", "nll_full", "nll_increase", "agreement", "acceptance")


@dataclass
class CacheQuality:
    """Per-position measurements of one compressed cache on a batch of B sequences of T tokens.

    Every array is (B, N) float64 with N = T - prefill - 1: column j is the decoding step that feeds the
    token at position ``prefill + j`` and predicts the token at ``prefill + j + 1`` (the prompt's own
    last prediction is left out: the prompt attends to all of itself, so no cache changes it)."""

    nll: torch.Tensor  # -log q(next token), q: the model reading the compressed cache
    nll_full: torch.Tensor  # -log p(next token), p: the model with every key
    agree: torch.Tensor  # 1.0 where argmax q == argmax p
    accept: torch.Tensor  # sum_x min(p(x), q(x)) = 1 - TV(p, q)
    bytes_per_position: float  # cache.stored_bytes() / (B * positions seen), at the end
    prefill: int

    def __post_init__(self):
        shape = self.nll.shape if isinstance(self.nll, torch.Tensor) else None
        for name in ("nll", "nll_full", "agree", "accept"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 2 \
                    or value.shape != shape:
                raise ValueError(f"{name}: expected a float tensor (B, N) like nll's {tuple(shape or ())}, "
                                 f"got {describe(value)}")
        number_in(self.bytes_per_position, "bytes_per_position", 0)
        positive_int(self.prefill, "prefill")

    @property
    def mean_nll(self) -> float:
        return self.nll.mean().item()

    @property
    def mean_nll_full(self) -> float:
        return self.nll_full.mean().item()

    @property
    def nll_increase(self) -> float:
        """Mean NLL under the compressed cache minus under the full one (nats per token)."""
        return (self.nll - self.nll_full).mean().item()

    @property
    def agreement(self) -> float:
        return self.agree.mean().item()

    @property
    def acceptance(self) -> float:
        return self.accept.mean().item()

    def per_sequence(self, metric: str) -> torch.Tensor:
        """The mean of ``metric`` (one of ``METRICS``) over each sequence's positions: (B,)."""
        values = {"nll": self.nll, "nll_full": self.nll_full, "agreement": self.agree, "acceptance": self.accept}
        if metric == "nll_increase":
            return (self.nll - self.nll_full).mean(dim=1)
        if metric not in values:
            raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
        return values[metric].mean(dim=1)

    def interval(self, metric: str = "nll_increase", draws: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
        """(mean, low, high): percentile bootstrap interval of ``metric``'s mean, resampling whole
        sequences (at least 2 rows needed). All sequences have N positions, so the mean of the
        per-sequence means is the mean over positions."""
        return bootstrap_interval(self.per_sequence(metric), draws=draws, level=level, seed=seed)

    def summary(self) -> dict:
        """The means of every metric and the bytes per position, for a table row."""
        return {"nll": self.mean_nll, "nll_full": self.mean_nll_full, "nll_increase": self.nll_increase,
                "agreement": self.agreement, "acceptance": self.acceptance,
                "bytes_per_position": self.bytes_per_position}


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """The full model's logits (B, T, V) of ``tokens`` (B, T): one uncached forward, the reference p
    of :func:`cache_quality`. Compute it once and pass it to every method compared on the same tokens."""
    _check_model(model)
    token_ids(tokens, "tokens", dim=2, expected="a (batch, time) torch.long tensor of token ids",
              vocab_size=model.config.vocab_size)
    int_in_range(tokens.shape[1], "tokens", 1, model.config.block_size,
                 expected=f"a length in [1, block_size={model.config.block_size}] (tokens.shape[1])")
    with torch.no_grad():
        return model(tokens)


def cache_quality(model, tokens: torch.Tensor, make_cache: Callable, prefill: int = 32,
                  reference_logits: torch.Tensor | None = None) -> CacheQuality:
    """Decode ``tokens`` (B, T) (held-out ids, T <= block size) through ``make_cache(model, B)`` and
    compare each step's next-token distribution q with the full model's p.

    The prompt ``tokens[:, :prefill]`` goes in one call; then ``tokens[:, t]`` one at a time for t =
    prefill .. T - 2 (teacher forcing), each step predicting token t + 1: N = T - prefill - 1 steps.
    ``reference_logits`` (B, T, V) are the full model's logits (:func:`full_logits`); without them one
    uncached forward computes them. ``model`` must be in eval mode (no dropout)."""
    _check_model(model)
    token_ids(tokens, "tokens", dim=2, expected="a (batch, time) torch.long tensor of token ids",
              vocab_size=model.config.vocab_size)
    B, T = tokens.shape
    int_in_range(T, "tokens", 3, model.config.block_size,
                 expected=f"a length in [3, block_size={model.config.block_size}] (tokens.shape[1])")
    int_in_range(prefill, "prefill", 1, T - 2, expected=f"an int in [1, T - 2 = {T - 2}]")
    if not callable(make_cache):
        raise ValueError(f"make_cache: expected a callable (model, batch_size) -> KVCache, got {make_cache!r}")
    if reference_logits is None:
        reference_logits = full_logits(model, tokens)
    expected = (B, T, model.config.vocab_size)
    if not isinstance(reference_logits, torch.Tensor) or tuple(reference_logits.shape) != expected:
        raise ValueError(f"reference_logits: expected a tensor {expected} (the full model's logits of tokens), "
                         f"got {describe(reference_logits)}")
    cache = make_cache(model, B)
    if not isinstance(cache, KVCache) or cache.batch_size != B or cache.length != 0:
        raise ValueError(f"make_cache: expected an empty KVCache for batch {B}, got {cache!r}")
    with torch.no_grad():
        q_logits = _teacher_forced_logits(model, tokens, cache, prefill)  # (B, N, V)
    return _compare(q_logits, reference_logits[:, prefill:T - 1], tokens[:, prefill + 1:], cache, prefill)


def heldout_sequences(tokenizer, n: int = 16, length: int = 256) -> torch.Tensor:
    """``n`` sequences (n, length) of Shakespeare's held-out text, evenly spaced over the report half
    (:func:`arlib.text.lm.heldout_halves`: the half the book reports on, never tunes on). Deterministic."""
    from arlib.data import shakespeare

    if isinstance(tokenizer, (str, bytes)) or not callable(getattr(tokenizer, "encode", None)):
        raise ValueError(f"tokenizer: expected the model's CharTokenizer, got {type(tokenizer).__name__}")
    positive_int(n, "n")
    positive_int(length, "length")
    ids = tokenizer.encode(shakespeare().val)
    token_ids(ids, "tokenizer", expected="a tokenizer whose encode returns a 1-D torch.long tensor of ids")
    report = heldout_halves(ids)[1]
    if n * length > len(report):
        raise ValueError(f"n: {n} sequences of {length} do not fit in the {len(report)} held-out tokens")
    starts = torch.arange(n) * ((len(report) - length) // max(n - 1, 1))
    return report[starts[:, None] + torch.arange(length)]  # (n, length)


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise ValueError(f"model: expected the book's GPT (arlib.text.gpt.GPT), got {type(model).__name__}")
    if model.training:
        raise ValueError("model: expected eval mode (call model.eval(): dropout would make q random)")


def _teacher_forced_logits(model, tokens: torch.Tensor, cache: KVCache, prefill: int) -> torch.Tensor:
    """Prompt in one call, then one token per call: the logits (B, N, V) of steps t = prefill .. T - 2."""
    model(tokens[:, :prefill], cache=cache)
    steps = [model(tokens[:, t:t + 1], cache=cache, validate=False)[:, -1] for t in range(prefill, tokens.shape[1] - 1)]
    return torch.stack(steps, dim=1)


def _compare(q_logits: torch.Tensor, p_logits: torch.Tensor, targets: torch.Tensor, cache: KVCache,
             prefill: int) -> CacheQuality:
    """The per-position metrics of q against p; q, p logits (B, N, V), targets (B, N)."""
    log_q = q_logits.double().log_softmax(dim=-1)
    log_p = p_logits.double().log_softmax(dim=-1)
    nll = -log_q.gather(-1, targets[..., None]).squeeze(-1)  # (B, N)
    nll_full = -log_p.gather(-1, targets[..., None]).squeeze(-1)
    agree = (log_q.argmax(-1) == log_p.argmax(-1)).double()
    accept = acceptance_rate(log_p.exp(), log_q.exp())  # (B, N)
    B = targets.shape[0]
    return CacheQuality(nll.cpu(), nll_full.cpu(), agree.cpu(), accept.cpu(),
                        bytes_per_position=cache.stored_bytes() / (B * cache.length), prefill=prefill)
