"""Beam search over a GPT with its KV cache.

Beam search keeps the ``width`` most likely prefixes at every step and extends each by every token,
the classic approximation to the most likely continuation (as used for neural translation by
Sutskever et al. 2014 and Wu et al. 2016). Width 1 is greedy decoding; a width at least the number of
possible hypotheses is exhaustive search.

Hypotheses may end early at an end token ``eos``; they then compete with longer ones under GNMT's
length penalty (Wu et al. 2016, eq. 14): the score of a hypothesis ``Y`` of ``|Y|`` new tokens is
``log P(Y) / lp(Y)`` with ``lp(Y) = ((5 + |Y|) / 6) ** alpha``, so ``alpha > 0`` counters the bias of
raw log-probabilities towards short outputs (``alpha = 0``: no penalty). The book's character models
have no end-of-sequence token; without ``eos`` every hypothesis has ``n_new`` tokens, ``lp`` divides
every score by the same number, and the penalty changes nothing.
"""

from __future__ import annotations

import math

import torch

from arlib.validate import ids_in_vocab, int_in_range, is_number, number_in, positive_int, token_ids


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's length penalty ``((5 + |Y|) / (5 + 1)) ** alpha`` (Wu et al. 2016, eq. 14) of hypotheses of
    ``length`` new tokens (a tensor of any shape, or a number), all >= 0; ``alpha`` a finite number."""
    number_in(alpha, "alpha", -math.inf, math.inf, bounds="()", expected="a finite number")
    if isinstance(length, torch.Tensor):
        if length.numel() and not bool((length >= 0).all()):  # False for NaN too
            raise ValueError("length: expected lengths >= 0")
    elif not is_number(length) or not 0 <= length < math.inf:
        raise ValueError(f"length: expected a tensor or a number >= 0, got {length!r}")
    return _length_penalty(length, alpha)


def _length_penalty(length, alpha: float):
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model, prompt: torch.Tensor, n_new: int, width: int, *, eos: int | None = None,
                alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` best continuations of ``prompt`` (T,) or (1, T) by at most ``n_new`` tokens that beam
    search finds: ``(sequences (width, T + n_new), log_probs (width,))``, best first; ``log_probs`` is
    ``sum log p(x_t | x_<t)`` over the new tokens up to and including ``eos``.

    Hypotheses are ranked by ``log_probs / length_penalty(|Y|, alpha)`` (Wu et al. 2016, eq. 14), at every
    step and at the end. A hypothesis that emits the token ``eos`` is finished: it keeps its score and
    length, and its row is padded with ``eos`` up to ``T + n_new``. Fewer than ``width`` rows come back
    when fewer distinct hypotheses exist. Uses one KV cache of ``width`` rows, reordered after every step
    to follow the surviving prefixes."""
    if not isinstance(model, torch.nn.Module) or not hasattr(getattr(model, "config", None), "block_size"):
        raise TypeError(f"model: expected a GPT (arlib.text.gpt.GPT), got {type(model).__name__}")
    if isinstance(prompt, torch.Tensor) and prompt.dim() == 1:
        prompt = prompt[None]
    token_ids(prompt, "prompt", dim=2, expected="a (T,) or (1, T) tensor of torch.long token ids")
    if prompt.shape[0] != 1 or prompt.shape[1] == 0:
        raise ValueError(f"prompt: expected one non-empty sequence, got shape {tuple(prompt.shape)}")
    ids_in_vocab(prompt, "prompt", model.config.vocab_size)
    n_new, width = positive_int(n_new, "n_new"), positive_int(width, "width")
    if eos is not None:
        eos = int_in_range(eos, "eos", 0, model.config.vocab_size - 1)
    number_in(alpha, "alpha", 0, float("inf"), bounds="[)", expected="a length-penalty exponent >= 0")
    if prompt.shape[1] + n_new > model.config.block_size:
        raise ValueError(f"n_new: prompt ({prompt.shape[1]}) + n_new ({n_new}) exceeds the context of "
                         f"{model.config.block_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompt = prompt.to(device)
    cache = model.new_cache(width)
    logits = model(prompt.expand(width, -1), cache=cache)[:, -1]  # (W, V): the same row W times
    scores = torch.full((width,), -torch.inf, device=device, dtype=torch.float64)
    scores[0] = 0.0  # one live hypothesis at the start, so the first step does not pick duplicates
    lengths = torch.zeros(width, device=device, dtype=torch.float64)  # new tokens, up to and with eos
    finished = torch.zeros(width, dtype=torch.bool, device=device)
    sequences = prompt.expand(width, -1)
    for step in range(n_new):
        logp = torch.log_softmax(logits.double(), dim=-1)  # (W', V), W' live hypotheses
        V = logp.shape[1]
        if eos is not None:  # a finished hypothesis only extends by eos, at no cost
            done_row = torch.full((V,), -torch.inf, device=device, dtype=logp.dtype)
            done_row[eos] = 0.0
            logp = torch.where(finished[:, None], done_row, logp)
        total = (scores[:, None] + logp).flatten()  # (W' * V,): log P of every candidate
        length = (lengths + (~finished).double())[:, None].expand(-1, V).flatten()  # (W' * V,)
        ranked = total / _length_penalty(length, alpha) if alpha else total
        _, flat = ranked.topk(min(width, len(ranked)))  # (W,)
        flat = flat[total[flat] > -torch.inf]  # fewer than W candidates exist in the first steps
        beam, token = flat // V, flat % V  # which prefix each survivor extends, and by which token
        scores, lengths = total[flat], length[flat]
        finished = finished[beam] | (token == eos) if eos is not None else finished[beam]
        sequences = torch.cat([sequences[beam], token[:, None]], dim=1)
        if step == n_new - 1:
            break
        cache.k, cache.v = cache.k[:, beam], cache.v[:, beam]  # (L, W', H, T_max, D): follow the survivors
        logits = model(token[:, None], cache=cache, validate=False)[:, -1]
    model.train(was_training)
    return sequences, scores
