"""MaskGIT (Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer"): a bidirectional
transformer over the same 7x7 token grids as the raster model, decoded in a few parallel steps.

Training (their section 3.1): per image draw r ~ U(0, 1), replace ceil(gamma(r) N) of the N tokens by a
[MASK] token, gamma(r) = cos(pi r / 2) (the cosine schedule, their section 3.3), and minimize the
cross-entropy of the masked tokens given the rest and the class.

Decoding (their section 3.2, Algorithm 1 in words) starts from all N tokens masked; at step t = 1..T:

1. predict every masked token at once and draw a token s_i for each from the predicted distribution;
2. score each draw by its log-probability plus Gumbel noise scaled by ``choice_temperature (1 - t/T)``
   (their reference code; the noise anneals to 0);
3. keep the most confident draws and mask again the n = floor(gamma(t/T) N0) least confident ones (N0
   the masked count at the start; at least 1 and at most one fewer than are masked), so that the last
   step, gamma(1) = 0, fills everything.

A decided token is never changed. T = 8 steps decide 49 tokens here in 8 forward passes instead of 49.

The book adds classifier-free guidance (class dropout 0.1 in training, the null class as the
unconditional input), as MUSE and the raster and next-scale models of chapter 4 do, so that the rows of
chapter 4's table sample with the same guidance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arlib.text.gpt import Block, GPTConfig
from arlib.text.sampling import draw, process_logits
from arlib.validate import describe, int_at_least, number_in, positive_int, token_ids
from arlib.validate import generator as check_generator
from arlib.vision.generators import GRID, cfg_logits, check_labels

__all__ = ["MaskGITModel", "decoding_plan", "mask_schedule", "maskgit_loss", "sample_maskgit"]


def mask_schedule(ratio) -> torch.Tensor | float:
    """MaskGIT's cosine schedule gamma(r) = cos(pi r / 2): the share of tokens masked at progress r in [0, 1]
    (a number or a tensor)."""
    if isinstance(ratio, torch.Tensor):
        if not ratio.is_floating_point() or bool(((ratio < 0) | (ratio > 1) | ratio.isnan()).any()):
            raise ValueError(f"ratio: expected values in [0, 1], got {describe(ratio)}")
        return torch.cos(math.pi / 2 * ratio)
    number_in(ratio, "ratio", 0, 1)
    return math.cos(math.pi / 2 * ratio)


def decoding_plan(steps: int, n_tokens: int, schedule=mask_schedule) -> list[int]:
    """How many of ``n_tokens`` tokens MaskGIT decides at each of its ``steps`` steps, from a mask schedule
    ``schedule(r)`` (a callable on a float r in [0, 1] returning the share still masked; the cosine by default).

    After step t = 1 .. T - 1, ``n = floor(schedule(t / T) * n_tokens)`` tokens are masked again, clamped as
    in MaskGIT's reference code to at least 1 and at most one fewer than were masked before the step (so a step
    may decide nothing once one token is left); step T decides the rest. The list sums to ``n_tokens``.

    >>> decoding_plan(8, 49)
    [1, 3, 5, 6, 7, 9, 9, 9]
    """
    steps, n_tokens = positive_int(steps, "steps"), positive_int(n_tokens, "n_tokens")
    if not callable(schedule):
        raise ValueError(f"schedule: expected a callable r -> share of tokens still masked, "
                         f"got {type(schedule).__name__}")
    masked, plan = n_tokens, []
    for t in range(1, steps):
        share = schedule(t / steps)
        try:
            share = float(share)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"schedule: expected a number for r = {t / steps}, got {type(share).__name__}") from None
        if not math.isfinite(share):
            raise ValueError(f"schedule: expected a finite share for r = {t / steps}, got {share}")
        left = max(1, min(math.floor(share * n_tokens), masked - 1))
        plan.append(masked - left)
        masked = left
    return plan + [masked]


def _check_plan(plan, steps: int, n_tokens: int) -> list[int]:
    def count(k) -> int | None:  # a Python or NumPy integer >= 0 (not a bool), else None
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            return None
        return int(k)

    counts = [count(k) for k in plan] if isinstance(plan, (list, tuple)) else None
    if counts is None or len(counts) != steps or None in counts or sum(counts) != n_tokens:
        raise ValueError(f"plan: expected {steps} integers >= 0 (one per step) that sum to {n_tokens}, got {plan!r}")
    return counts


class MaskGITModel(nn.Module):
    """A bidirectional transformer over [class] + N = 49 grid tokens (the book's GPT blocks, no causal mask).

    Inputs: token ids (B, 49) in [0, num_codes], num_codes being [MASK]; labels (B,) in [0, num_classes]
    (num_classes is the null class). ``forward(labels, tokens)`` -> logits over the codes (B, 49, num_codes).
    """

    def __init__(self, num_codes: int, num_classes: int = 10, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128):
        super().__init__()
        positive_int(num_codes, "num_codes")
        int_at_least(num_classes, "num_classes", 1)
        self.num_codes, self.num_classes, self.mask_id = num_codes, num_classes, num_codes
        self.length = GRID * GRID
        self.config = GPTConfig(vocab_size=num_codes + 1, block_size=self.length + 1, n_layer=n_layer,
                                n_head=n_head, n_embd=n_embd)
        self.token_emb = nn.Embedding(num_codes + 1, n_embd)  # the last row is [MASK]
        self.class_emb = nn.Embedding(num_classes + 1, n_embd)  # the last row is the null class
        self.pos_emb = nn.Parameter(torch.randn(self.length + 1, n_embd) * 0.02)
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, num_codes)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        labels = check_labels(labels, self.num_classes)
        token_ids(tokens, "tokens", dim=2, vocab_size=self.num_codes + 1,
                  expected=f"a (B, {self.length}) torch.long tensor of codes or [MASK] = {self.mask_id}")
        if tokens.shape != (len(labels), self.length):
            raise ValueError(f"tokens: expected ({len(labels)}, {self.length}) ids (one row per label), "
                             f"got {describe(tokens)}")
        x = torch.cat([self.class_emb(labels)[:, None], self.token_emb(tokens)], 1) + self.pos_emb  # (B, 50, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, None, layer, True)  # True: every position sees every other one
        return self.head(self.ln_f(x[:, 1:]))  # (B, 49, K): the class position predicts nothing


def _check_model(model) -> MaskGITModel:
    inner = getattr(model, "module", model)  # a distributed wrapper's module
    if not isinstance(inner, MaskGITModel):
        raise TypeError(f"model: expected a MaskGITModel, got {type(model).__name__}")
    return inner


def maskgit_loss(model: MaskGITModel, grids: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """MaskGIT's training loss: mean cross-entropy (nats) of the masked tokens of grids (B, 7, 7) given the
    visible ones and labels (B,) (class dropout, if any, is the caller's: pass the null class). Each row
    masks ceil(cos(pi r / 2) 49) tokens (at least 1), r ~ U(0, 1) from ``generator``."""
    inner = _check_model(model)
    token_ids(grids, "grids", dim=3, vocab_size=inner.num_codes, expected=f"(B, {GRID}, {GRID}) code ids")
    if grids.shape[1:] != (GRID, GRID):
        raise ValueError(f"grids: expected (B, {GRID}, {GRID}) code ids, got {describe(grids)}")
    check_generator(generator)
    tokens = grids.flatten(1)  # (B, N)
    B, N = tokens.shape
    r = torch.rand(B, generator=generator, device=tokens.device)
    n_masked = torch.ceil(mask_schedule(r) * N).clamp(1, N)  # (B,)
    rank = torch.rand(B, N, generator=generator, device=tokens.device).argsort(1).argsort(1)  # a random order
    masked = rank < n_masked[:, None]  # (B, N): the first n_masked positions of the order
    logits = model(labels, torch.where(masked, inner.mask_id, tokens))
    return F.cross_entropy(logits[masked], tokens[masked])


@torch.no_grad()
def sample_maskgit(model: MaskGITModel, labels: torch.Tensor, steps: int = 8, cfg_scale: float = 1.0,
                   temperature: float = 1.0, choice_temperature: float = 4.5,
                   generator: torch.Generator | None = None, return_passes: bool = False, plan=None):
    """Token grids (B, 7, 7) by MaskGIT's iterative decoding in ``steps`` forward passes (doubled rows with
    guidance, as in :func:`arlib.vision.generators.sample_raster`). ``temperature`` shapes the draws,
    ``choice_temperature`` the Gumbel noise on the confidences (4.5 in MaskGIT's code, annealed to 0);
    ``plan`` the number of tokens decided at each step (``steps`` integers >= 0 summing to 49; by default
    :func:`decoding_plan` of the cosine schedule); ``return_passes=True`` also returns the number of forward
    passes."""
    inner = _check_model(model)
    labels = check_labels(labels, inner.num_classes)
    steps = int_at_least(steps, "steps", 1)
    number_in(cfg_scale, "cfg_scale", -math.inf, math.inf, bounds="()", expected="a finite guidance scale")
    number_in(choice_temperature, "choice_temperature", 0, math.inf, bounds="[)", expected="a finite number >= 0")
    check_generator(generator)
    B, N, device = len(labels), inner.length, labels.device
    plan = decoding_plan(steps, N) if plan is None else _check_plan(plan, steps, N)
    still_masked = [N - sum(plan[:t + 1]) for t in range(steps)]  # after each step
    guided = cfg_scale != 1.0
    rows = torch.cat([labels, torch.full_like(labels, inner.num_classes)]) if guided else labels
    tokens = torch.full((B, N), inner.mask_id, dtype=torch.long, device=device)
    passes = 0
    for t in range(steps):
        masked = tokens == inner.mask_id  # (B, N)
        logits = model(rows, tokens.repeat(2, 1) if guided else tokens).float()  # (B or 2B, N, K)
        passes += 1
        if guided:
            logits = cfg_logits(logits[:B], logits[B:], cfg_scale)
        logits = process_logits(logits.reshape(B * N, -1), temperature, None)  # (B N, K)
        drawn = draw(logits, generator).view(B, N)
        drawn = torch.where(masked, drawn, tokens)  # decided tokens stay
        if t == steps - 1:
            tokens = drawn
            break
        log_p = logits.log_softmax(-1).gather(1, drawn.view(-1, 1)).view(B, N)  # log-probability of each draw
        gumbel = -torch.log(-torch.log(torch.rand(B, N, generator=generator, device=device).clamp(1e-20, 1)))
        confidence = log_p + choice_temperature * (1 - (t + 1) / steps) * gumbel
        confidence = torch.where(masked, confidence, math.inf)  # decided tokens are never masked again
        order = confidence.argsort(1).argsort(1)  # rank 0 = least confident
        tokens = torch.where(order < still_masked[t], inner.mask_id, drawn)  # every row starts from N masked
    grids = tokens.view(B, GRID, GRID)
    return (grids, passes) if return_passes else grids
