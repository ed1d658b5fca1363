"""A league table of speculative drafters on the Shakespeare target, Spec-Bench style (chapter 2, section 6).

    python benchmarks/speculative.py --league                 # 24 prompts per workload, writes the JSON
    python benchmarks/speculative.py --league --quick         # 4 prompts, a smoke run
    python benchmarks/speculative_league.py --out PATH ...    # the same, directly

Workloads, both from the *report* half of the held-out text (the select half tunes the settings):
- ``free``: continue 64 characters of held-out Shakespeare by 192 characters;
- ``copy``: a held-out passage of 112 characters, a blank line, and the passage's first 16 characters
  again: the natural continuation repeats the passage (120 new characters), so copying pays.
Each in two modes: greedy (tokens asserted equal to plain greedy decoding) and sampled at temperature 1.

Drafters: the draft model (chain, a fixed gamma and Hugging Face's heuristic schedule), prompt lookup,
early exit with a shared cache (LayerSkip-style), Medusa and Hydra heads as chains and as top-k trees
(Medusa-1's sparse-tree construction from measured top-k accuracies), EAGLE (chain, static tree,
EAGLE-2's dynamic tree), and Hugging Face's assisted generation on the same weights (draft model with a
constant and the heuristic number of assistant tokens, and its prompt-lookup mode).

Hugging Face's rows generate 8 tokens fewer than the others (its prompt-lookup sampling runs past the
context at the full length), against its own plain ``generate`` of the same length.

Settings (gamma, exit layer, tree size) are chosen per mode on 4 prompts of the select half (free
continuation), by measured speed-up, then frozen. For every report prompt, each method runs once,
interleaved with the target's plain cached decoding (arlib's ``generate``; Hugging Face's rows are
divided by Hugging Face's own plain ``generate``), with the same seed. Reported per workload and mode:
tau (new tokens per target pass), the median speed-up over prompts and its quartiles, and the cost
model's prediction, tau times a plain step over the isolated cost of one step (the proposal plus a
target pass over the positions the step scores; verification and bookkeeping are left out).
Ratios only: compare them across machines, not tokens per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from kv_cache import device_name

import arlib
from arlib.checkpoints import load_meta
from arlib.data import shakespeare
from arlib.decoding.draft_heads import EarlyExitModel, HeadDrafter
from arlib.decoding.drafters import ModelDrafter, NGramDrafter, SamplingOptions
from arlib.decoding.eagle import EagleDrafter
from arlib.decoding.recipes import load_eagle_head
from arlib.decoding.speculative import draft_cost, layerskip_generate, speculative_generate
from arlib.decoding.tree_decoding import HeadTreeDrafter, best_choices, chain_choices, head_topk_accuracy, tree_generate
from arlib.text.lm import heldout_halves
from arlib.text.sampling import generate

ROOT = Path(__file__).resolve().parents[1]
HF_MARGIN = 8  # Hugging Face's rows generate this many tokens fewer (see main)
WORKLOADS = {"free": dict(prompt_len=64, new_tokens=192), "copy": dict(passage=112, cue=16, new_tokens=120)}


def workload_prompts(tokenizer, ids: torch.Tensor, kind: str, n: int) -> list[torch.Tensor]:
    """n prompts (1-D token ids) of workload ``kind`` from evenly spaced stretches of ``ids``."""
    w = WORKLOADS[kind]
    span = w["prompt_len"] if kind == "free" else w["passage"]
    stride = (len(ids) - span) // n
    prompts = []
    for i in range(n):
        piece = ids[i * stride:i * stride + span]
        if kind == "copy":
            gap = tokenizer.encode("\n\n")
            piece = torch.cat([piece, gap, piece[:w["cue"]]])
        prompts.append(piece)
    return prompts


@dataclass
class Method:
    """One row of the league: a drafter's family, its setting, and how to run it. ``kind`` is "chain"
    (``speculative_generate`` with ``make()`` and ``gamma``), "tree" (``tree_generate`` with ``make()``) or
    "layerskip" (``layerskip_generate`` with ``options`` exits and exit_layer); ``options`` are passed on."""

    name: str
    family: str
    setting: str
    kind: str
    make: object = None
    gamma: int | None = None
    options: dict = field(default_factory=dict)

    def run(self, target, prompt, new_tokens: int, greedy: bool, generator):
        if self.kind == "chain":
            return speculative_generate(target, self.make(), prompt, new_tokens, self.gamma, generator=generator,
                                        greedy=greedy, **self.options)
        if self.kind == "tree":
            return tree_generate(target, self.make(), prompt, new_tokens, generator=generator, greedy=greedy)
        return layerskip_generate(target, self.options["exits"], self.options["exit_layer"], prompt, new_tokens,
                                  self.gamma, generator=generator, greedy=greedy)

    def propose_cost(self, target, prefix: torch.Tensor) -> float:
        """Seconds of one isolated proposal (a layerskip step drafts with the first E layers and its exit)."""
        if self.kind == "tree":
            return tree_propose_cost(self.make(), target, prefix)
        if self.kind == "layerskip":
            model = EarlyExitModel(target, self.options["exit_layer"], self.options["exits"])
            return draft_cost(ModelDrafter(model), target, prefix, self.gamma)
        return draft_cost(self.make(), target, prefix, self.gamma)


def pass_costs(target, prefix: torch.Tensor, sizes, repeats: int = 20) -> dict[int, float]:
    """Seconds of one target pass over N positions after ``prefix`` (1, L) (a chain: as costly as a tree
    of N nodes), N in ``sizes``; the median of ``repeats``, the smallest of three rounds."""
    cache = target.new_cache(1)
    with torch.no_grad():
        target(prefix, cache=cache)
        best = {}
        L = prefix.shape[1]
        for _ in range(3):
            for N in sizes:
                x = torch.zeros(1, N, dtype=torch.long)
                times = []
                for _ in range(repeats + 3):
                    t0 = time.perf_counter()
                    target(x, cache=cache)
                    times.append(time.perf_counter() - t0)
                    cache.crop(L)
                best[N] = min(best.get(N, float("inf")), statistics.median(times[3:]))
    return best


def tree_propose_cost(drafter, target, prefix: torch.Tensor, repeats: int = 20) -> float:
    """Seconds of one ``propose_tree`` after the drafter observed ``prefix`` (1, L): the median of ``repeats``."""
    drafter.reset()
    with torch.no_grad():
        _, hidden = target(prefix[:, :-1], return_hidden=True)
        drafter.observe(hidden[-1], prefix[:, 1:])
        times = []
        for _ in range(repeats + 3):
            t0 = time.perf_counter()
            drafter.propose_tree(prefix, SamplingOptions())
            times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def hf_generate(hf_model, prompt: torch.Tensor, new_tokens: int, greedy: bool, seed: int, assistant_config=None,
                **assist):
    """Hugging Face ``generate`` (1, T + N) and the number of target forward passes it made.
    ``assistant_config``: settings written into ``assist["assistant_model"].generation_config`` first; Hugging
    Face reads the number of assistant tokens, its schedule and the confidence threshold from there (passed
    to ``generate`` they are ignored: the same passes whatever their value, as we found)."""
    for key, value in (assistant_config or {}).items():
        setattr(assist["assistant_model"].generation_config, key, value)
    calls = [0]
    hook = hf_model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        torch.manual_seed(seed)
        x = prompt[None]
        sampling = {} if greedy else {"top_k": 0}  # Hugging Face's default top_k = 50 would truncate p
        out = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=not greedy, pad_token_id=0, **sampling, **assist)
    finally:
        hook.remove()
    return out, calls[0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 report prompts per workload, 2 tuning prompts")
    parser.add_argument("--prompts", type=int, default=24, help="report prompts per workload")
    parser.add_argument("--tune-prompts", type=int, default=4, help="select-half prompts that choose the settings")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face's assisted generation")
    parser.add_argument("--out", default=None, help="JSON path (default: data/results/speculative-league-cpu.json)")
    parser.add_argument("--hf-only", default=None, metavar="JSON",
                        help="rerun only Hugging Face's rows and replace them in this league JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.tune_prompts = 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    checkpoint = arlib.load("shakespeare-target")
    target, tokenizer = checkpoint.model.eval(), checkpoint.tokenizer
    draft = arlib.load("shakespeare-draft").model.eval()
    heads = arlib.load("shakespeare-heads").model.eval()
    eagle = load_eagle_head(target)

    val_ids = tokenizer.encode(shakespeare().val)
    select_ids, report_ids = heldout_halves(val_ids)
    tune = workload_prompts(tokenizer, select_ids, "free", args.tune_prompts)
    prefix = tune[0][None]  # where step costs are measured: a 64-character held-out context

    # the heads' trees: Medusa-1's construction from top-k accuracies on select-half windows
    windows = select_ids[:64 * 129].view(64, 129)
    with torch.no_grad():
        accuracy = {kind: head_topk_accuracy(target, getattr(heads, kind), windows, k=6)
                    for kind in ("medusa", "hydra")}
    gen = torch.Generator()

    def candidates() -> dict[str, list[Method]]:
        """Every method's settings to tune: name -> the candidate Methods."""
        out: dict[str, list[Method]] = {}
        out["draft model"] = [Method("draft model", "draft model", f"gamma {g}", "chain",
                                     lambda: ModelDrafter(draft), g) for g in (2, 3, 4, 5, 6)]
        out["draft model, heuristic gamma"] = [
            Method("draft model, heuristic gamma", "draft model", f"heuristic, from {g}", "chain",
                   lambda: ModelDrafter(draft), g, {"schedule": "heuristic"}) for g in (4, 8)]
        out["prompt lookup"] = [Method("prompt lookup", "prompt lookup", f"gamma {g}", "chain",
                                       lambda: NGramDrafter(max_n=3), g) for g in (2, 4, 6, 8)]
        out["early exit, shared cache"] = [
            Method("early exit, shared cache", "early exit", f"exit {E}, gamma {g}", "layerskip", None, g,
                   {"exits": heads.exits, "exit_layer": E}) for E in (2, 3) for g in (2, 3, 4)]
        for kind, label in (("medusa", "Medusa"), ("hydra", "Hydra")):
            module = getattr(heads, kind)
            out[f"{label} chain"] = [Method(f"{label} chain", label, f"gamma {g}", "chain",
                                            lambda m=module: HeadDrafter(m), g) for g in (2, 3, 4, 6)]
            out[f"{label} tree"] = [
                Method(f"{label} tree", label, f"{size} nodes", "tree", _head_tree(module, accuracy[kind], size))
                for size in (6, 8, 12, 16)]
        out["EAGLE chain"] = [Method("EAGLE chain", "EAGLE", f"depth {d}", "tree",
                                     lambda d=d: EagleDrafter(eagle, chain_choices(d))) for d in (3, 5)]
        out["EAGLE tree"] = [Method("EAGLE tree", "EAGLE", f"{n} nodes", "tree",
                                    _eagle_tree(eagle, best_choices(eagle_accuracy, n))) for n in (6, 10, 16)]
        out["EAGLE-2 dynamic tree"] = [
            Method("EAGLE-2 dynamic tree", "EAGLE", f"{n} nodes", "tree",
                   lambda n=n: EagleDrafter(eagle, dynamic=True, depth=5, top_k=3, n_nodes=n))
            for n in (8, 12, 20)]
        return out

    eagle_accuracy = torch.tensor(load_meta("shakespeare-eagle")["metrics"]["teacher_forced"]["rank_accuracy"])

    def time_one(method: Method, prompt, new_tokens, greedy, seed):
        gen.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            out, stats = method.run(target, prompt, new_tokens, greedy, gen)
        return time.perf_counter() - t0, out, stats

    def base_time(prompt, new_tokens, greedy, seed):
        gen.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = generate(target, prompt[None], new_tokens, generator=gen, greedy=greedy)
        return time.perf_counter() - t0, out

    # 1. tune: each family's setting with the best median speed-up on the select prompts, per mode
    chosen: dict[tuple[str, bool], Method] = {}
    n_tune = WORKLOADS["free"]["new_tokens"]
    previous = json.loads(Path(args.hf_only).read_text()) if args.hf_only else None
    for name, options in ({} if previous else candidates()).items():
        for greedy in (True, False):
            scores = []
            for method in options:
                ratios = []
                for i, p in enumerate(tune):
                    tb, _ = base_time(p, n_tune, greedy, i)
                    tm, _, _ = time_one(method, p[None], n_tune, greedy, i)
                    ratios.append(tb / tm)
                scores.append(statistics.median(ratios))
            chosen[name, greedy] = options[int(np.argmax(scores))]
            print(f"tuned {name:30s} {'greedy ' if greedy else 'sampled'}: {chosen[name, greedy].setting} "
                  f"({max(scores):.2f}x on the select prompts)", flush=True)

    # 2. isolated costs for the cost model
    t_step = pass_costs(target, prefix, [1])[1]
    t_pass = pass_costs(target, prefix, [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64])
    sizes = sorted(t_pass)
    propose_costs: dict[str, float] = {}

    def predicted(method: Method, tau: float, scored: float) -> float:
        """tau x a plain step / (the isolated proposal + a target pass over the positions scored)."""
        cost = propose_costs[method.name] + float(np.interp(scored, sizes, [t_pass[s] for s in sizes]))
        return tau * t_step / cost

    # 3. the league on the report prompts
    rows = []
    hf_methods = []
    if not args.no_hf:
        from arlib.text.hf import to_hf

        hf_target, hf_draft = to_hf(target), to_hf(draft)
        draft_gamma = (chosen["draft model", True].gamma if previous is None else
                       int(next(r["setting"] for r in previous["rows"] if r["method"] == "draft model"
                                and r["mode"] == "greedy").split()[-1]))
        hf_methods = [  # HF's assistant settings: the constant row uses the draft model's tuned greedy gamma
            ("HF assisted, draft model, constant",
             dict(assistant_model=hf_draft, assistant_config=dict(
                 num_assistant_tokens=draft_gamma, num_assistant_tokens_schedule="constant",
                 assistant_confidence_threshold=0.0))),
            ("HF assisted, draft model, heuristic",
             dict(assistant_model=hf_draft, assistant_config=dict(
                 num_assistant_tokens=20, num_assistant_tokens_schedule="heuristic",
                 assistant_confidence_threshold=0.4))),
            ("HF prompt lookup", dict(prompt_lookup_num_tokens=4))]
    for kind in WORKLOADS:
        prompts = workload_prompts(tokenizer, report_ids, kind, args.prompts)
        N = WORKLOADS[kind]["new_tokens"]
        for greedy in (True, False):
            mode = "greedy" if greedy else "sampled"
            base = []
            per = {name: {"ratio": [], "calls": 0, "scored": 0, "steps": 0} for name in
                   [n for (n, g) in chosen if g == greedy] + [m[0] for m in hf_methods]}
            hf_base = []
            for i, p in enumerate(prompts):
                tb, out = base_time(p, N, greedy, 1000 + i)
                base.append(tb)
                for (name, g), method in chosen.items():
                    if g != greedy:
                        continue
                    tm, out_m, stats = time_one(method, p[None], N, greedy, 1000 + i)
                    if greedy:
                        assert torch.equal(out_m, out), f"{name}: greedy output differs from plain greedy decoding"
                    rec = per[name]
                    rec["ratio"].append(tb / tm)
                    rec["calls"] += stats.target_calls
                    rec["steps"] += stats.steps
                    rec["scored"] += sum(stats.scored) if stats.scored else sum(d + 1 for d in stats.drafted)
                if hf_methods:  # HF_MARGIN fewer tokens: its prompt-lookup sampling overruns the context otherwise
                    th, out_h = _timed(hf_generate, hf_target, p, N - HF_MARGIN, greedy, 1000 + i)
                    if greedy:
                        assert torch.equal(out_h[0][0], out[0, :out_h[0].shape[1]]), "HF greedy differs from arlib's"
                    hf_base.append(th)
                    for name, assist in hf_methods:
                        ta, (out_a, calls) = _timed(hf_generate, hf_target, p, N - HF_MARGIN, greedy, 1000 + i,
                                                    **assist)
                        if greedy:
                            assert torch.equal(out_a[0], out[0, :out_a.shape[1]]), f"{name}: differs from greedy"
                        per[name]["ratio"].append(th / ta)
                        per[name]["calls"] += calls - 1  # the prefill pass is not a verification
                print(f"  {kind} {mode}: prompt {i + 1}/{len(prompts)}", end="\r", flush=True)
            print()
            for name, rec in per.items():
                method = chosen.get((name, greedy))
                q25, q50, q75 = np.percentile(rec["ratio"], [25, 50, 75])
                tau = len(prompts) * (N if method else N - HF_MARGIN) / max(1, rec["calls"])
                row = dict(method=name, family=method.family if method else "Hugging Face",
                           setting=method.setting if method else "", workload=kind, mode=mode, tau=round(tau, 3),
                           speedup_median=round(float(q50), 3), speedup_q25=round(float(q25), 3),
                           speedup_q75=round(float(q75), 3), prompts=len(prompts))
                if method is not None:
                    row["scored_per_pass"] = round(rec["scored"] / max(1, rec["steps"]), 2)
                    if name not in propose_costs:
                        propose_costs[name] = method.propose_cost(target, prefix)
                    row["predicted"] = round(predicted(method, tau, row["scored_per_pass"]), 3)
                    row["baseline"] = "arlib generate (same target, cached)"
                else:
                    row["baseline"] = "Hugging Face generate (same weights)"
                rows.append(row)
                print(f"{kind:5s} {mode:7s} {name:38s} {row['setting']:18s} tau {tau:5.2f}  speed-up "
                      f"{q50:5.2f}x [{q25:4.2f}, {q75:4.2f}]" +
                      (f"  predicted {row['predicted']:5.2f}x" if "predicted" in row else ""), flush=True)
    result = dict(device="cpu", device_name=device_name("cpu"), date=datetime.now(UTC).isoformat(timespec="seconds"),
                  torch=torch.__version__, threads=torch.get_num_threads(), prompts=args.prompts,
                  tune_prompts=args.tune_prompts, workloads=WORKLOADS, step_ms=round(t_step * 1e3, 4),
                  pass_ms={str(k): round(v * 1e3, 4) for k, v in t_pass.items()},
                  method=__doc__.split("\n\n", 2)[2].strip(), rows=rows)
    if previous is not None:  # keep the first run's rows and settings, with Hugging Face's rows of this run
        result = dict(previous, rows=[r for r in previous["rows"] if r["family"] != "Hugging Face"] +
                      [r for r in rows if r["family"] == "Hugging Face"],
                      hf_rows=dict(date=result["date"], note="Hugging Face's rows rerun with --hf-only, on the same "
                                   "machine, after the assistant's settings were moved into its generation_config"))
    out = Path(args.out) if args.out else ROOT / "data/results/speculative-league-cpu.json"
    if not args.quick or args.out:
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return result


def _eagle_tree(head, choices):
    """A maker of EAGLE drafters with the static tree ``choices``."""
    return lambda: EagleDrafter(head, choices)


def _head_tree(heads, accuracy: torch.Tensor, size: int):
    """A maker of Medusa/Hydra tree drafters with Medusa-1's ``size``-node tree for these accuracies."""
    choices = best_choices(accuracy, size)
    return lambda: HeadTreeDrafter(heads, choices)


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


if __name__ == "__main__":
    main()
