"""Speculative decoding on the Shakespeare pair: measured speed-ups beside the theory, and Hugging Face as a peer.

    python benchmarks/speculative.py            # 20 validation prompts, gammas 2..8, two timed runs each
    python benchmarks/speculative.py --quick    # 6 prompts, three gammas, one timed run each
    python benchmarks/speculative.py --league   # the league table of drafters (benchmarks/speculative_league.py)

For each drafter (the draft model sampled at the generation's temperature; prompt lookup, the n-gram
drafter; early exit from the target's first layers; Medusa and Hydra heads on the target's hidden
state; greedy verification with the draft model) and each gamma, every prompt is decoded by the
target alone (``arlib.text.sampling.generate`` with the KV cache, same temperature or greedy) and by
``speculative_generate``, interleaved, the faster of the timed runs kept; the speed-up is the median over
prompts of the per-prompt ratio. The best gamma is the one with the highest median. Beside it stand
the predictions: Leviathan et al.'s ``(1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))`` with the
measured alpha and c (each drafter's ``draft_cost`` per token over a target step), the refined model whose
denominator is ``gamma c + v(gamma)``, v the measured cost of one target pass over gamma + 1 positions
relative to one step, and the loop-order cost model of chapter 2: E[tokens] times the plain decoding
cost per token over the three parts of a step timed in the loop's order (``arlib.decoding.speculative.step_costs``).
Then Hugging Face's assisted
generation on the same weights (``to_hf`` of both models, ``assistant_model=``), greedy, must give the
same tokens as arlib's greedy decoding (asserted), and its speed-up over its own greedy ``generate``.
Every number comes from this one run; compare ratios across machines, not tokens per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import arlib
from arlib.data import shakespeare
from arlib.decoding.draft_heads import EarlyExitModel, HeadDrafter
from arlib.decoding.drafters import ModelDrafter, NGramDrafter
from arlib.decoding.speculative import draft_cost, expected_tokens, speculative_generate, speedup, step_costs
from arlib.text.sampling import generate


def isolated_costs(target, draft, prefix: torch.Tensor, gammas, repeats: int, rounds: int = 5):
    """Seconds of one cached target step, one cached draft step, and v(gamma): one target pass over
    gamma + 1 positions relative to a step, after ``prefix`` (1, T). Each cost is the median of
    ``repeats`` runs (rolling the cache back each time); the rounds interleave the measurements and
    the smallest median is kept, so that a burst of other load on the machine does not stick."""
    configs = [(draft, 1), (target, 1)] + [(target, g + 1) for g in gammas]
    caches = []
    for model, _ in configs:
        caches.append(model.new_cache(1))
        model(prefix, cache=caches[-1])
    best = [float("inf")] * len(configs)
    for _ in range(rounds):
        for i, ((model, width), cache) in enumerate(zip(configs, caches)):
            x, times = prefix[:, :width], []
            for _ in range(repeats + 5):
                t0 = time.perf_counter()
                model(x, cache=cache)
                times.append(time.perf_counter() - t0)
                cache.crop(prefix.shape[1])
            best[i] = min(best[i], statistics.median(times[5:]))
    t_draft, t_target = best[0], best[1]
    return t_target, t_draft, {g: t / t_target for g, t in zip(gammas, best[2:])}


def best_of(runs: int, fn, *args, **kwargs):
    """Smallest wall time of ``runs`` calls of ``fn(*args, **kwargs)`` and the last output."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def seeded(gen: torch.Generator, seed: int, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` after seeding ``gen``: every timed run draws the same numbers."""
    gen.manual_seed(seed)
    return fn(*args, **kwargs)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--league" in argv:  # the drafters' league table, Spec-Bench style: its own options
        import speculative_league

        speculative_league.main([a for a in argv if a != "--league"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 prompts, gammas 3 4 6, one timed run each")
    parser.add_argument("--prompts", type=int, default=20, help="validation prompts (medians over them)")
    parser.add_argument("--prompt-len", type=int, default=64, help="characters per prompt")
    parser.add_argument("--new-tokens", type=int, default=192, help="tokens generated per prompt")
    parser.add_argument("--gammas", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    parser.add_argument("--runs", type=int, default=2, help="timed runs per measurement (the fastest is kept)")
    parser.add_argument("--temperature", type=float, default=1.0, help="for the sampled rows, target and draft")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face's assisted generation")
    parser.add_argument("--exit-layer", type=int, default=3, help="layer of the early-exit drafter")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.gammas, args.runs = 6, [3, 4, 6], 1
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = arlib.load("shakespeare-target")
    target, tokenizer = checkpoint.model, checkpoint.tokenizer
    draft = arlib.load("shakespeare-draft").model
    target.eval(), draft.eval()
    heads = arlib.load("shakespeare-heads", target.wte.weight.device).model
    val, P, N = shakespeare().val, args.prompt_len, args.new_tokens
    stride = (len(val) - P) // args.prompts
    prompts = [tokenizer.encode(val[i * stride:i * stride + P]) for i in range(args.prompts)]  # (P,) each
    if P + N > target.config.block_size:
        parser.error(f"--prompt-len + --new-tokens must fit the context of {target.config.block_size}")
    print(f"target {target.num_params():,} parameters, draft {draft.num_params():,}; {torch.get_num_threads()} "
          f"threads; {len(prompts)} validation prompts of {P} characters, {N} new tokens each; temperature "
          f"{args.temperature} for the sampled rows; fastest of {args.runs} runs per prompt, medians over prompts")

    # the step costs, measured midway through a generation's context
    prefix = tokenizer.encode(val[:P + N // 2])[None]
    with torch.no_grad():
        t_target, t_draft, v = isolated_costs(target, draft, prefix, args.gammas, 100 if not args.quick else 30)
    c = t_draft / t_target
    print(f"target step {t_target * 1e3:.3f} ms, draft step {t_draft * 1e3:.3f} ms (c = {c:.3f}); verify cost "
          f"v(gamma) = " + ", ".join(f"{g}: {v[g]:.2f}" for g in args.gammas))

    drafters = {  # name -> (make drafter, greedy)
        "draft model": (lambda: ModelDrafter(draft), False),
        "prompt lookup": (lambda: NGramDrafter(max_n=3), False),
        f"early exit, layer {args.exit_layer}": (lambda: ModelDrafter(EarlyExitModel(target, args.exit_layer,
                                                                                   heads.exits)), False),
        "Medusa heads": (lambda: HeadDrafter(heads.medusa), False),
        "Hydra heads": (lambda: HeadDrafter(heads.hydra), False),
        "draft model, greedy": (lambda: ModelDrafter(draft), True),
    }

    def gammas_of(name):  # heads propose at most n_heads tokens: a larger gamma would repeat the largest
        cap = heads.hydra.n_heads if "heads" in name else max(args.gammas)
        return [g for g in args.gammas if g <= cap] or [cap]

    base_time = {False: [], True: []}
    spec = {(name, g): {"time": [], "betas": [], "accepted": 0, "examined": 0, "calls": 0, "draft_calls": 0,
                        "draft_time": 0.0, "target_time": 0.0, "wall_time": 0.0}
            for name in drafters for g in gammas_of(name)}
    greedy_out = []
    gen = torch.Generator()
    for i, prompt in enumerate(prompts):
        for greedy in (False, True):
            t, out = best_of(args.runs, seeded, gen, i, generate, target, prompt, N, generator=gen,
                             temperature=args.temperature, greedy=greedy)
            base_time[greedy].append(t)
            if greedy:
                greedy_out.append(out)
        for name, (make, greedy) in drafters.items():
            for g in gammas_of(name):
                t, (out, s) = best_of(args.runs, seeded, gen, i, speculative_generate, target, make(), prompt, N, g,
                                      generator=gen, temperature=args.temperature, greedy=greedy)
                if greedy:
                    assert torch.equal(out, greedy_out[i]), "greedy speculative decoding differs from greedy decoding"
                rec = spec[name, g]
                rec["time"].append(t)
                rec["betas"] += s.betas
                rec["accepted"] += sum(s.accepted)
                rec["examined"] += sum(min(a + 1, d) for a, d in zip(s.accepted, s.drafted))
                rec["calls"] += s.target_calls
                rec["draft_calls"] += s.draft_calls
                for key in ("draft_time", "target_time", "wall_time"):
                    rec[key] += getattr(s, key)
        print(f"  prompt {i + 1}/{len(prompts)} done", end="\r", flush=True)
    print()

    def ratio(name, g):
        greedy = drafters[name][1]
        return statistics.median(b / t for b, t in zip(base_time[greedy], spec[name, g]["time"]))

    with torch.no_grad():
        gen_plain = torch.Generator().manual_seed(0)
        t_plain = min(best_of(1, generate, target, prompts[0], N, generator=gen_plain)[0] for _ in range(5)) / N
    header = (f"{'drafter':<20} | {'gamma':>5} | {'c':>5} | {'alpha':>5} | {'tok/call':>8} | {'E[tok/call]':>11} | "
              f"{'tok/s':>6} | {'target tok/s':>12} | {'speedup':>7} | {'Leviathan':>9} | {'refined':>7} | "
              f"{'loop order':>10}")
    print("\nat the best gamma of each drafter (speedup: median over prompts of target-only time / speculative time)")
    print(header)
    print("-" * len(header))
    summary = {}
    for name, (_, greedy) in drafters.items():
        g = max(gammas_of(name), key=lambda g: ratio(name, g))
        rec = spec[name, g]
        # alpha: mean beta = 1 - TV(p, q) at the examined positions; for one-hot and greedy drafts, the
        # accepted fraction of the examined drafts (beta is then the chance of the exact match)
        alpha = statistics.fmean(rec["betas"]) if rec["betas"] and not greedy and name != "prompt lookup" \
            else rec["accepted"] / max(1, rec["examined"])
        make = drafters[name][0]
        with torch.no_grad():
            propose_seconds = draft_cost(make(), target, prefix, g)
            cost = propose_seconds / g / t_target
            loop_order = expected_tokens(alpha, g) * t_plain / sum(step_costs(target, make(), prefix, g).values())
        measured = ratio(name, g)
        summary[name] = (g, measured, propose_seconds)
        print(f"{name:<20} | {g:>5} | {cost:5.3f} | {alpha:5.3f} | {len(prompts) * N / rec['calls']:8.2f} | "
              f"{expected_tokens(alpha, g):11.2f} | {N / statistics.median(rec['time']):6.0f} | "
              f"{N / statistics.median(base_time[greedy]):12.0f} | {measured:6.2f}x | "
              f"{speedup(alpha, g, cost):8.2f}x | {speedup(alpha, g, cost, v[g]):6.2f}x | {loop_order:9.2f}x")
    print("\nwhere the time goes at the best gamma, per target call, in ms: in the loop vs the isolated step "
          "costs above (one proposal of gamma drafts by draft_cost, and v(gamma) target steps)")
    print(f"{'drafter':<20} | {'drafting':>17} | {'target pass':>17} | {'rest':>5} | {'total':>5}")
    for name in drafters:
        g, rec = summary[name][0], spec[name, summary[name][0]]
        per_call = lambda key, rec=rec: rec[key] / rec["calls"] * 1e3  # noqa: E731
        rest = per_call("wall_time") - per_call("draft_time") - per_call("target_time")
        print(f"{name:<20} | {per_call('draft_time'):5.2f} (isol {summary[name][2] * 1e3:4.2f}) | "
              f"{per_call('target_time'):5.2f} (isol {v[g] * t_target * 1e3:4.2f}) | {rest:5.2f} | "
              f"{per_call('wall_time'):5.2f}")
    print("\nspeedup by gamma (median over prompts)")
    print(f"{'drafter':<20} | " + " | ".join(f"{g:>5}" for g in args.gammas))
    for name in drafters:
        print(f"{name:<20} | " + " | ".join(f"{ratio(name, g):5.2f}" if g in gammas_of(name) else f"{'-':>5}"
                                              for g in args.gammas))

    if args.no_hf:
        return
    try:
        from arlib.text.hf import to_hf

        hf_target, hf_draft = to_hf(target), to_hf(draft)
    except ImportError:
        print("\nHugging Face transformers is not installed: no peer comparison")
        return
    g_best = summary["draft model, greedy"][0]
    hf_base, hf_assist, arlib_greedy = [], [], []
    for i, prompt in enumerate(prompts):
        x = prompt[None]
        kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False, pad_token_id=0)
        t_plain, out_plain = best_of(args.runs, hf_target.generate, x, **kw)
        # Hugging Face reads these from the assistant's generation_config (as arguments of generate they are ignored)
        hf_draft.generation_config.num_assistant_tokens = g_best
        hf_draft.generation_config.num_assistant_tokens_schedule = "constant"
        hf_draft.generation_config.assistant_confidence_threshold = 0.0
        t_assist, out_assist = best_of(args.runs, hf_target.generate, x, assistant_model=hf_draft, **kw)
        assert torch.equal(out_plain[0], greedy_out[i]), "Hugging Face greedy differs from arlib greedy"
        assert torch.equal(out_assist[0], greedy_out[i]), "Hugging Face assisted generation differs from arlib greedy"
        hf_base.append(t_plain)
        hf_assist.append(t_assist)
        arlib_greedy.append(spec["draft model, greedy", g_best]["time"][i])
    med = statistics.median
    print(f"\nHugging Face assisted generation, greedy, same weights, constant gamma = {g_best} "
          f"(tokens equal to arlib's greedy decoding: asserted)")
    print(f"  HF greedy generate    {N / med(hf_base):6.0f} tok/s   arlib greedy generate    "
          f"{N / med(base_time[True]):6.0f} tok/s")
    print(f"  HF assisted           {N / med(hf_assist):6.0f} tok/s   arlib speculative greedy "
          f"{N / med(arlib_greedy):6.0f} tok/s")
    print(f"  speedup over own greedy: HF {med(b / a for b, a in zip(hf_base, hf_assist)):.2f}x, "
          f"arlib {med(b / a for b, a in zip(base_time[True], arlib_greedy)):.2f}x; "
          f"arlib speculative / HF assisted speed: {med(h / a for h, a in zip(hf_assist, arlib_greedy)):.2f}x")


if __name__ == "__main__":
    main()
