"""Checks for chapter 1 (autoregressive factorization, a GPT from scratch, sampling, the KV cache)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arlib.checks.core import Check
from arlib.text.gpt import GPT, GPTConfig
from arlib.text.sampling import top_p as reference_top_p


def perplexity(fn) -> None:
    """Exercise 1.1: ``fn(log_probs) -> float``, exp of the mean negative log-probability (nats)."""
    with Check("1.1", "perplexity") as c:
        hint = "perplexity = exp(mean of -log p) over the tokens; log_probs are natural logarithms"
        cases = [
            (torch.zeros(5), 1.0, "a model that is always certain and right"),
            (torch.full((7,), -math.log(84)), 84.0, "a uniform guess over 84 characters"),
            (torch.log(torch.tensor([0.5, 0.25, 0.125])), 4.0, "probabilities 1/2, 1/4, 1/8"),
            (torch.tensor([-1.3]), math.exp(1.3), "a single token"),
        ]
        for log_probs, expected, what in cases:
            got = c.number(c.call(fn, log_probs.clone()), f"the perplexity for {what}", hint)
            c.expect(abs(got - expected) < 1e-4 * expected, f"perplexity for {what}", expected, got, hint)
        got = c.number(c.call(fn, torch.tensor([-0.1, -float("inf")])), "the perplexity with an impossible token", hint)
        c.expect(math.isinf(got), "perplexity when one token has probability 0", "inf", got,
                 "a single impossible token makes the mean NLL infinite; do not clamp or drop it")


def top_p_filter(fn) -> None:
    """Exercise 1.2: ``fn(logits, p) -> logits`` with ``-inf`` outside the nucleus, batched over rows."""
    with Check("1.2", "top-p (nucleus) filtering") as c:
        hint = ("sort probabilities in decreasing order, keep the shortest prefix whose mass reaches p "
                "(always at least one token), set the other logits to -inf, and undo the sort")
        g = torch.Generator().manual_seed(1)
        for batch, vocab, p, scale in [(1, 5, 0.5, 2), (4, 10, 0.9, 2), (3, 84, 0.95, 2), (2, 7, 1.0, 2),
                                       (2, 6, 1e-6, 2), (200, 84, 1.0, 4)]:
            logits = torch.randn(batch, vocab, generator=g) * scale
            got = c.call(fn, logits.clone(), p)
            expected = reference_top_p(logits, p)
            c.expect(isinstance(got, torch.Tensor) and got.shape == logits.shape, "output shape",
                     tuple(logits.shape), tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__,
                     "return logits of the same shape as the input")
            kept_ok = torch.equal(torch.isfinite(got), torch.isfinite(expected))
            c.expect(kept_ok, f"which tokens are kept for p={p} (batch {batch}, vocab {vocab})",
                     torch.isfinite(expected).int(), torch.isfinite(got).int(), hint)
            c.close(torch.where(torch.isfinite(got), got, 0.0), torch.where(torch.isfinite(expected), expected, 0.0),
                    "kept logits are unchanged", hint="do not rescale the logits you keep")


def cached_attention(fn) -> None:
    """Exercise 1.3: one decoding step of causal attention with a KV cache.

    ``fn(q, k_new, v_new, k_cache, v_cache) -> (out, k_all, v_all)`` with q, k_new, v_new (B, H, 1, D)
    and caches (B, H, T, D), T >= 0.
    """
    with Check("1.3", "attention with a KV cache") as c:
        hint = ("append k_new and v_new to the caches along the time axis, then attend from q over all "
                "T + 1 keys: softmax(q k^T / sqrt(D)) v; no mask is needed for the newest query")
        g = torch.Generator().manual_seed(2)
        for B, H, T, D in [(1, 1, 0, 4), (2, 3, 5, 8), (1, 2, 17, 16)]:
            q, k, v = (torch.randn(B, H, T + 1, D, generator=g) for _ in range(3))
            full = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T+1, D)
            got = c.call(fn, q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], k[:, :, :-1], v[:, :, :-1])
            c.expect(isinstance(got, tuple) and len(got) == 3, "the return value", "(out, k_all, v_all)",
                     type(got).__name__, "return the attention output and both grown caches")
            out, k_all, v_all = got
            c.close(k_all, k, f"the grown key cache (T={T})", hint="concatenate along dim=2 (time)")
            c.close(v_all, v, f"the grown value cache (T={T})", hint="concatenate along dim=2 (time)")
            c.close(out, full[:, :, -1:], f"attention output of the new token (B={B}, H={H}, T={T}, D={D})",
                    atol=1e-5, hint=hint)


def continuation_log_prob(fn) -> None:
    """Exercise 1.4: ``fn(model, prompt_ids, continuation_ids) -> float``: log p(continuation | prompt)."""
    with Check("1.4", "log-probability of a continuation") as c:
        hint = ("run the model once on prompt + continuation without its last token; the logits at position "
                "i predict token i + 1; sum the log-softmax of the continuation tokens only")
        torch.manual_seed(3)
        model = GPT(GPTConfig(vocab_size=11, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
        g = torch.Generator().manual_seed(3)
        for n_prompt, n_cont in [(1, 1), (3, 4), (10, 1), (5, 12)]:
            prompt = torch.randint(0, 11, (n_prompt,), generator=g)
            cont = torch.randint(0, 11, (n_cont,), generator=g)
            ids = torch.cat([prompt, cont])[None]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[:, :-1]), dim=-1)[0]  # (T-1, V)
            expected = logp[n_prompt - 1:].gather(-1, cont[:, None]).sum().item()
            calls = []
            hook = model.register_forward_hook(lambda module, inputs, output, calls=calls: calls.append(1))
            try:
                got = c.call(fn, model, prompt.clone(), cont.clone())
            finally:
                hook.remove()
            got = c.number(got, f"log p of {n_cont} tokens after a {n_prompt}-token prompt", hint)
            c.expect(abs(got - expected) < 1e-4, f"log p of {n_cont} tokens after a {n_prompt}-token prompt",
                     round(expected, 5), got, hint)
            c.expect(len(calls) == 1, "the number of forward passes", 1, len(calls),
                     "teacher forcing scores every continuation token in a single call of the model")


def kl_divergence(fn) -> None:
    """Exercise 1.5: ``fn(p, q) -> float``, KL(p || q) in nats for two distributions over the same set."""
    with Check("1.5", "KL divergence") as c:
        hint = "KL(p||q) = sum over x with p(x) > 0 of p(x) log(p(x) / q(x)); terms with p(x) = 0 are 0"
        cases = [
            (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), 0.0, "p = q"),
            (torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), math.log(2), "p one-hot"),
            (torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.1, 0.6, 0.3]),
             0.2 * math.log(2) + 0.3 * math.log(0.5) + 0.5 * math.log(5 / 3), "three outcomes"),
            (torch.tensor([0.0, 0.25, 0.75]), torch.tensor([0.5, 0.25, 0.25]), 0.75 * math.log(3), "p has a zero"),
        ]
        for p, q, expected, what in cases:
            got = c.number(c.call(fn, p.clone(), q.clone()), f"KL for {what}", hint)
            c.expect(abs(got - expected) < 1e-6, f"KL for {what}", round(expected, 6), got, hint)
        got = c.number(c.call(fn, torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])), "KL with q = 0 where p > 0",
                       hint)
        c.expect(math.isinf(got), "KL when q is 0 where p is not", "inf", got,
                 "a model that gives probability 0 to an observed outcome is infinitely surprised")


def kneser_ney_bigram(fn) -> None:
    """Exercise 1.6: ``fn(counts, D) -> (V, V)`` interpolated Kneser-Ney bigram table from bigram counts."""
    from arlib.text.ngram import NGramModel

    with Check("1.6", "a Kneser-Ney bigram model") as c:
        hint = ("p_uni(w) = (max(N(w) - D, 0) + D T / V) / sum_w N(w) with N(w) the number of distinct characters "
                "seen before w; p(w|h) = (max(c(h w) - D, 0) + D T(h) p_uni(w)) / c(h), or p_uni(w) if c(h) = 0")
        g = torch.Generator().manual_seed(4)
        for V, n, D in [(5, 40, 0.75), (12, 300, 0.5), (30, 50, 0.75), (8, 2000, 0.9)]:
            ids = torch.randint(0, V, (n,), generator=g)
            counts = torch.zeros(V, V).index_put_((ids[:-1], ids[1:]), torch.ones(n - 1), accumulate=True)
            got = c.call(fn, counts.clone(), D)
            expected = NGramModel(2, V, smoothing="kneser_ney", discount=D).fit(ids).probs(torch.arange(V)[:, None])
            unseen = int((counts.sum(1) == 0).sum())
            c.close(got, expected, f"the table for {V} characters, {n} tokens, D = {D} ({unseen} unseen contexts)",
                    atol=1e-6, hint=hint)
