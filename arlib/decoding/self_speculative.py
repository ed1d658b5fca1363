"""LayerSkip's self-speculative decoding: draft with the target's first layers, verify with the rest, one cache.

Elhoushi et al. (2024), the section on inference with self-speculative decoding (its parts: self-drafting,
self-verification, reusing the cache). The draft is the target's first E blocks and an exit head; the
verification is the target itself. Drafting computes, for every position it reads, the keys and values of
layers 0 .. E-1 and the residual stream after block E-1; the verification then needs only blocks E .. L-1
for those positions. LayerSkip shares three things between the stages:

- the weights of layers 0 .. E-1 (the draft *is* the target's first layers, as with
  :class:`arlib.decoding.draft_heads.EarlyExitModel`);
- the KV cache of layers 0 .. E-1 ("single KV cache"): the keys and values the draft wrote are the ones the
  verification attends to, and after verification the accepted drafts' entries stay;
- the compute of layers 0 .. E-1 ("exit query cache"): the layer-E states of the drafted positions are kept
  and stacked as the verification's input to block E.

So each position goes through each block once, unless it is a rejected draft. Compare
``ModelDrafter(EarlyExitModel(...))`` in :func:`arlib.decoding.speculative.speculative_generate`, where the draft
keeps its own cache and the target's pass recomputes layers 0 .. E-1 over the drafts.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from arlib.decoding.draft_heads import ExitHeads
from arlib.decoding.drafters import SamplingOptions
from arlib.decoding.speculative import (
    SpecStats,
    _check_prompt,
    _check_schedule,
    _finish,
    _next_gamma,
    _record_step,
    _verify_step,
)
from arlib.text.gpt import GPT, KVCache, causal_mask
from arlib.text.sampling import gumbel_noise
from arlib.validate import generator as check_generator
from arlib.validate import int_at_least, int_in_range

__all__ = ["layerskip_generate"]


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
    and the tied unembedding give p; :func:`arlib.decoding.speculative._verify_one` (Leviathan et al. 2023,
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
