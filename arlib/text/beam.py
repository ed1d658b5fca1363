"""Beam search over a GPT with its KV cache.

Beam search keeps the ``width`` most likely prefixes at every step and extends each by every token,
the classic approximation to the most likely continuation (as used for neural translation by
Sutskever et al. 2014 and Wu et al. 2016). The book's character models have no end-of-sequence token,
so every hypothesis has the same length and GNMT's length penalty (Wu et al. 2016, eq. 14) would
divide every score by the same number: it is left out. Width 1 is greedy decoding; a width of
``V ** n_new`` is exhaustive search.
"""

from __future__ import annotations

import torch

from arlib.validate import positive_int, token_ids


@torch.no_grad()
def beam_search(model, prompt: torch.Tensor, n_new: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` most likely continuations of ``prompt`` (T,) or (1, T) by ``n_new`` tokens that beam
    search finds: ``(sequences (width, T + n_new), log_probs (width,))``, best first; ``log_probs`` is
    ``sum log p(x_t | x_<t)`` over the new tokens. Uses one KV cache of ``width`` rows, reordered after
    every step to follow the surviving prefixes."""
    if isinstance(prompt, torch.Tensor) and prompt.dim() == 1:
        prompt = prompt[None]
    token_ids(prompt, "prompt", dim=2, expected="a (T,) or (1, T) tensor of torch.long token ids")
    if prompt.shape[0] != 1 or prompt.shape[1] == 0:
        raise ValueError(f"prompt: expected one non-empty sequence, got shape {tuple(prompt.shape)}")
    positive_int(n_new, "n_new")
    positive_int(width, "width")
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
    sequences = prompt.expand(width, -1)
    for step in range(n_new):
        logp = torch.log_softmax(logits.double(), dim=-1)  # (W', V), W' live hypotheses
        candidates = (scores[:, None] + logp).flatten()  # (W' * V,)
        scores, flat = candidates.topk(min(width, len(candidates)))  # (W,)
        keep = scores > -torch.inf  # fewer than W candidates exist in the first steps of a tiny vocabulary
        scores, flat = scores[keep], flat[keep]
        V = logp.shape[1]
        beam, token = flat // V, flat % V  # which prefix each survivor extends, and by which token
        sequences = torch.cat([sequences[beam], token[:, None]], dim=1)
        if step == n_new - 1:
            break
        cache.k, cache.v = cache.k[:, beam], cache.v[:, beam]  # (L, W', H, T_max, D): follow the survivors
        logits = model(token[:, None], cache=cache, validate=False)[:, -1]
    model.train(was_training)
    return sequences, scores
