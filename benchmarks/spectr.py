"""Multi-draft verification: acceptance vs the number of drafts k, and what the exact optimum costs.

    python benchmarks/spectr.py            # acceptance vs k, LP timings, SpecTr decoding vs speculative decoding
    python benchmarks/spectr.py --quick    # fewer instances, sizes and prompts

Part 1 prints, for k = 1..8, the mean acceptance of single-draft speculative sampling (1 - TV, which no
k improves), SpecInfer's recursive rejection sampling with replacement (exact formula), K-SEQ (exact
formula) and the optimum alpha*_k (``optimal_acceptance``: the min-cut formula on sorted prefixes), over
(a) random Dirichlet pairs on a small vocabulary and (b) the Shakespeare target's and draft's real
next-character distributions at held-out positions, restricted to the 6 characters the draft finds most
likely (renormalized). Where the exact LP is small enough it is solved too, and its largest difference
from the formula printed. Part 2 times the exact LP against vocabulary size and k: its size grows as
V^k, while K-SEQ's work is O(k V). Part 3 decodes held-out prompts with the Shakespeare pair three ways,
interleaved prompt by prompt: the target alone (``generate``, KV cache), single-draft speculative decoding
(``speculative_generate`` with the draft model) and SpecTr (``spectr_generate``, K-SEQ) for each k, at
each gamma, its k drafts verified as k batched rows and (``tree k=``) as one token tree. It prints tokens
per target call (block efficiency) and the median per-prompt speed-up over plain decoding, both also
relative to speculative decoding at the same gamma. All ratios come from this one run; compare them across
machines, not the absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import arlib
from arlib.data import shakespeare
from arlib.decoding.drafters import ModelDrafter
from arlib.decoding.spectr import (
    kseq_acceptance,
    optimal_acceptance,
    optimal_acceptance_lp,
    rrs_acceptance,
    spectr_generate,
)
from arlib.decoding.speculative import speculative_generate
from arlib.text.sampling import generate


def random_pairs(n: int, V: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return [(torch.tensor(rng.dirichlet(np.full(V, a))), torch.tensor(rng.dirichlet(np.full(V, a))))
            for a in rng.choice([0.3, 1.0, 3.0], size=n)]


@torch.no_grad()
def shakespeare_pairs(n: int, top: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(p, q) of the target and the draft at n held-out positions, restricted to the draft's top characters."""
    checkpoint = arlib.load("shakespeare-target")
    target, tokenizer = checkpoint.model, checkpoint.tokenizer
    draft = arlib.load("shakespeare-draft").model
    ids = tokenizer.encode(shakespeare().val)[:256 * 8].view(8, 256)  # (8, 256)
    p, q = target(ids).double().softmax(-1), draft(ids).double().softmax(-1)  # (8, 256, V)
    flat_p, flat_q = p.flatten(0, 1), q.flatten(0, 1)
    positions = torch.linspace(16, len(flat_p) - 1, n).long()
    pairs = []
    for i in positions:
        keep = flat_q[i].topk(top).indices
        pi, qi = flat_p[i, keep], flat_q[i, keep]
        pairs.append((pi / pi.sum(), qi / qi.sum()))
    return pairs


def acceptance_table(title: str, pairs, ks, lp_max_k: int) -> None:
    print(f"\n{title}: mean acceptance over {len(pairs)} pairs")
    print(f"{'k':>3} | {'single (1-TV)':>13} | {'recursive rej.':>14} | {'K-SEQ':>6} | {'optimum':>7} | "
          f"{'K-SEQ / opt. (min)':>18} | {'LP = optimum':>12}")
    P, Q = torch.stack([p for p, _ in pairs]), torch.stack([q for _, q in pairs])
    for k in ks:
        single = float(torch.minimum(P, Q).sum(-1).mean())
        rrs = float(rrs_acceptance(P, Q, k).mean())
        kseq, best = kseq_acceptance(P, Q, k), optimal_acceptance(P, Q, k)  # (n,) each; the optimum by sorted prefixes
        if k <= lp_max_k:  # the LP agrees with the sorted-prefix formula (to the solver's tolerance)
            gap = max(abs(optimal_acceptance_lp(p, q, k) - float(b)) for (p, q), b in zip(pairs, best))
            lp_text = f"{gap:12.1e}"
        else:
            lp_text = f"{'-':>12}"
        print(f"{k:3d} | {single:13.4f} | {rrs:14.4f} | {float(kseq.mean()):6.4f} | {float(best.mean()):7.4f} | "
              f"{float((kseq / best).min()):18.3f} | {lp_text}")


def lp_timings(sizes, ks, repeats: int) -> None:
    print("\nexact LP solve time (HiGHS), median of a few random pairs, vs K-SEQ's closed form")
    print(f"{'V':>4} | {'k':>2} | {'LP variables':>12} | {'LP s':>8} | {'K-SEQ s':>8}")
    for V in sizes:
        for k in ks:
            if V ** k > 200_000:
                continue
            pairs = random_pairs(repeats, V, seed=V * 10 + k)
            lp_times, ks_times = [], []
            for p, q in pairs:
                t0 = time.perf_counter()
                optimal_acceptance_lp(p, q, k)
                lp_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                kseq_acceptance(p, q, k)
                ks_times.append(time.perf_counter() - t0)
            variables = sum(len(set(t)) for t in np.ndindex(*([V] * k)))  # one per (tuple, token in it)
            print(f"{V:4d} | {k:2d} | {variables:12,d} | {statistics.median(lp_times):8.4f} | "
                  f"{statistics.median(ks_times):8.5f}")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


@torch.no_grad()
def decoding_table(n_prompts: int, new_tokens: int, gammas, ks) -> None:
    """SpecTr (K-SEQ) against speculative decoding and plain decoding on held-out prompts, interleaved."""
    checkpoint = arlib.load("shakespeare-target")
    target, tokenizer = checkpoint.model, checkpoint.tokenizer
    draft = arlib.load("shakespeare-draft").model
    val = shakespeare().val
    stride = (len(val) - 64) // n_prompts
    prompts = [tokenizer.encode(val[i * stride:i * stride + 64]) for i in range(n_prompts)]  # (64,) each
    generator = torch.Generator().manual_seed(0)
    print(f"\nSpecTr decoding, {n_prompts} prompts x {new_tokens} characters (median per-prompt ratios)")
    print(f"{'gamma':>5} | {'method':>10} | {'tokens/call':>11} | {'vs SD':>6} | {'speed-up':>8} | {'vs SD':>6}")
    for gamma in gammas:
        rows = {}  # method -> list of (speed-up over plain, tokens per call) per prompt
        for x in prompts:
            plain, _ = timed(generate, target, x[None], new_tokens, generator=generator)
            t, (_, s) = timed(speculative_generate, target, ModelDrafter(draft), x, new_tokens, gamma,
                              generator=generator)
            rows.setdefault("SD", []).append((plain / t, s.tokens_per_call))
            for k in ks:
                t, (_, s) = timed(spectr_generate, target, draft, x, new_tokens, k, gamma, generator=generator)
                rows.setdefault(f"SpecTr k={k}", []).append((plain / t, s.tokens_per_call))
                if k > 1:  # the same k drafts verified as one token tree (tree attention, one cache row)
                    t, (_, s) = timed(spectr_generate, target, draft, x, new_tokens, k, gamma, generator=generator,
                                      tree=True)
                    rows.setdefault(f"tree k={k}", []).append((plain / t, s.tokens_per_call))
        sd_tokens = statistics.fmean(b for _, b in rows["SD"])
        for method, values in rows.items():
            tokens = statistics.fmean(b for _, b in values)
            speed = statistics.median(a for a, _ in values)
            vs_sd = statistics.median(a / s for (a, _), (s, _) in zip(values, rows["SD"]))
            print(f"{gamma:5d} | {method:>10} | {tokens:11.2f} | {tokens / sd_tokens:6.2f} | {speed:7.2f}x | "
                  f"{vs_sd:6.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n, ks = (20, [1, 2, 3, 4]) if args.quick else (100, list(range(1, 9)))
    torch.set_num_threads(1)
    acceptance_table("random Dirichlet pairs, V = 5", random_pairs(n, 5, seed=0), ks, lp_max_k=4)
    acceptance_table("Shakespeare target vs draft, the draft's top 6 characters", shakespeare_pairs(n, 6), ks,
                     lp_max_k=4)
    lp_timings([4, 8, 16, 32] if not args.quick else [4, 8], [1, 2, 3, 4], 3)
    if args.quick:
        decoding_table(4, 96, [4], [1, 2, 4])
    else:
        decoding_table(16, 128, [3, 5], [1, 2, 4, 8])


if __name__ == "__main__":
    main()
