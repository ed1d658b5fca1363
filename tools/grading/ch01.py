"""Grading specs of chapter 1: perplexity, top-p, cached attention, scoring, KL, Kneser-Ney."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tools.grading.core import Case, Spec, close, describe, gpt_of, number_close, t, tensor_close


def _log_probs(rng):
    cases = []
    for k in range(6):
        n = 1 if k == 0 else int(rng.integers(2, 80))
        logits = rng.standard_normal((n, int(rng.integers(2, 90)))) * rng.uniform(0.5, 4)
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        dtype = torch.float32 if k % 2 else torch.float64
        cases.append(Case((t(lp[np.arange(n), rng.integers(0, lp.shape[1], n)], dtype),), f"{n} tokens"))
    impossible = t(np.append(-rng.uniform(0, 3, 4), -np.inf))
    cases.append(Case((impossible[rng.permutation(5)],), "one token of probability 0"))
    return cases


def _perplexity(case):
    return math.exp(-case.args[0].double().mean().item())


def _top_p_cases(rng):
    cases = []
    for k in range(7):
        B, V = int(rng.integers(1, 20)), int(rng.integers(2, 100))
        logits = t(rng.standard_normal((B, V)) * rng.uniform(0.5, 4), torch.float32)
        probs = torch.softmax(logits.double(), -1).sort(-1, descending=True).values.cumsum(-1)
        p = 1.0 if k == 0 else (1e-7 if k == 1 else float(rng.uniform(0.05, 0.99)))
        while 0 < p < 1 and float((probs - p).abs().min()) < 1e-4:  # no token on the boundary, up to rounding
            p = float(rng.uniform(0.05, 0.99))
        cases.append(Case((logits, p), f"{B} rows of {V} logits, p = {p:.4g}"))
    return cases


def _top_p(case):
    from arlib.text.sampling import top_p

    return top_p(case.args[0].clone(), case.args[1])


def _top_p_compare(got, expected, case):
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return f"expected a tensor of shape {tuple(expected.shape)}, got {describe(got)}"
    if not torch.equal(torch.isfinite(got), torch.isfinite(expected)):
        return "a different set of kept tokens"
    if bool((got[~torch.isfinite(got)] != -math.inf).any()):
        return "dropped logits must be -inf"
    return tensor_close(torch.where(torch.isfinite(got), got, 0.0), torch.where(torch.isfinite(expected), expected,
                        0.0), 1e-6)


def _attention_cases(rng):
    cases = []
    for k in range(4):
        B, H, D = (int(rng.integers(1, 4)) for _ in range(3))
        D = int(rng.integers(1, 33))
        T = 0 if k == 0 else int(rng.integers(1, 30))
        q, kn, vn = (t(rng.standard_normal((B, H, 1, D)), torch.float32) for _ in range(3))
        kc, vc = (t(rng.standard_normal((B, H, T, D)), torch.float32) for _ in range(2))
        cases.append(Case((q, kn, vn, kc, vc), f"B={B}, H={H}, T={T}, D={D}"))
    return cases


def _attention(case):
    q, kn, vn, kc, vc = case.args
    k, v = torch.cat([kc, kn], 2), torch.cat([vc, vn], 2)
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double()), k, v


def _attention_compare(got, expected, case):
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"expected (out, k_all, v_all), got {describe(got)}"
    for name, g, e, tol in zip(("out", "k_all", "v_all"), got, expected, (1e-5, 0, 0)):
        reason = tensor_close(g, e, tol, 1e-5)
        if reason:
            return f"{name}: {reason}"
    return None


def _continuation_cases(rng):
    cases = []
    for _ in range(4):
        vocab = int(rng.integers(3, 20))
        model = {"gpt": {"seed": int(rng.integers(2**31)), "config": {"vocab_size": vocab, "block_size": 32,
                 "n_layer": 1, "n_head": 2, "n_embd": 16}}}
        n_prompt, n_cont = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        prompt, cont = (t(rng.integers(0, vocab, n), torch.long) for n in (n_prompt, n_cont))
        cases.append(Case((model, prompt, cont), f"{n_cont} tokens after {n_prompt}", kind="forward_count"))
    return cases


def _continuation(case):
    model = gpt_of(case.args[0])
    prompt, cont = case.args[1:]
    ids = torch.cat([prompt, cont])[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).double(), -1)[0]
    return logp[len(prompt) - 1:].gather(-1, cont[:, None]).sum().item()


def _continuation_compare(got, expected, case):
    if not isinstance(got, list) or len(got) != 2:
        return "no result"
    value, calls = got
    return number_close(value, expected, 1e-4, 1e-5) or (None if calls == 1 else f"{calls} forward passes, not 1")


def _kl_cases(rng):
    cases = []
    for k in range(6):
        V = int(rng.integers(2, 40))
        p, q = rng.dirichlet(np.ones(V)), rng.dirichlet(np.ones(V))
        if k % 2:
            p[rng.integers(0, V, size=max(1, V // 3))] = 0.0
            p = p / p.sum() if p.sum() > 0 else np.eye(V)[0]
        if k == 4:
            q = p.copy()
        cases.append(Case((t(p), t(q)), f"{V} outcomes" + (", zeros in p" if k % 2 else "")))
    p, q = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
    q[int(np.argmax(p))] = 0.0
    cases.append(Case((t(p), t(q / q.sum())), "q = 0 where p > 0"))
    return cases


def _kl(case):
    p, q = case.args
    s = p > 0
    return float((p[s] * (p[s].log() - q[s].log())).sum())


def _kn_cases(rng):
    cases = []
    for k in range(4):
        V, n, D = int(rng.integers(3, 25)), int(rng.integers(10, 800)), float(rng.uniform(0.1, 0.95))
        ids = t(rng.integers(0, V - 1 if k == 0 else V, n), torch.long)
        if k == 0:
            ids[-1] = V - 1  # a character seen only at the end: a context never seen
        ones = torch.ones(n - 1, dtype=torch.float64)
        counts = torch.zeros(V, V, dtype=torch.float64).index_put_((ids[:-1], ids[1:]), ones, accumulate=True)
        cases.append(Case((counts.float(), D), f"{V} characters, {n} tokens, D = {D:.3f}", extra=ids))
    return cases


def _kn(case):
    from arlib.text.ngram import NGramModel

    V = case.args[0].shape[0]
    model = NGramModel(2, V, smoothing="kneser_ney", discount=case.args[1]).fit(case.extra)
    return model.probs(torch.arange(V)[:, None])


SPECS = [
    Spec("1.1", ("perplexity",), (), _log_probs, _perplexity, close(0.0, 1e-5)),
    Spec("1.2", ("top_p_filter",), ("arlib.text.sampling.top_p",), _top_p_cases, _top_p, _top_p_compare),
    Spec("1.3", ("cached_attention",), ("arlib.text.gpt.KVCache.attend",), _attention_cases, _attention,
         _attention_compare),
    Spec("1.4", ("continuation_log_prob",), (), _continuation_cases, _continuation, _continuation_compare),
    Spec("1.5", ("kl_divergence",), ("torch.nn.functional.kl_div", "torch.kl_div"), _kl_cases, _kl,
         close(1e-9, 1e-9)),
    Spec("1.6", ("kneser_ney_bigram",), ("arlib.text.ngram.NGramModel.fit", "arlib.text.ngram.NGramModel.probs",
                                         "arlib.text.ngram.NGramModel._prob"), _kn_cases, _kn, close(1e-6)),
]
