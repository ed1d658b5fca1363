"""Recipes that train the book's committed checkpoints: ``python -m arlib.recipes NAME``.

A recipe is deterministic for a given device and thread count (fixed seeds, fixed data order) and
writes ``data/checkpoints/NAME.safetensors`` with its JSON sidecar. ``--steps`` shortens a run (tests
use a few steps); ``--out`` writes elsewhere. Under ``torchrun --nproc_per_node N`` the same command
trains data-parallel (each rank draws its own batches; rank 0 evaluates and saves).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import dataclass, replace
from functools import partial

import torch

from arlib.checkpoints import load_gpt, save_checkpoint
from arlib.data import SOURCES, shakespeare
from arlib.env import pick_device, seed_everything
from arlib.gpt import GPT, GPTConfig
from arlib.heads import DraftHeads
from arlib.lm import heldout_nll, next_token_loss, random_windows
from arlib.tokenizer import CharTokenizer
from arlib.train import TrainConfig, distributed_context, train


@dataclass(frozen=True)
class LMRecipe:
    """A character GPT trained on Shakespeare's training split.

    The held-out text (the last 10 % of every work) is cut in two halves: the first ("select") chooses
    the regularization and the early-stopping point, the second ("report") is only scored, so the
    reported NLL is not the one the choices were made on.
    """

    model: GPTConfig
    train: TrainConfig
    batch_size: int
    description: str


def _shakespeare_vocab() -> str:
    return CharTokenizer.from_text(shakespeare().text).vocab  # 84 characters


def heldout_halves(val_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(select, report): the first and second half of the held-out ids."""
    half = len(val_ids) // 2
    return val_ids[:half], val_ids[half:]


RECIPES: dict[str, LMRecipe] = {
    "shakespeare-target": LMRecipe(
        model=GPTConfig(vocab_size=84, block_size=256, n_layer=6, n_head=8, n_embd=256, dropout=0.2),
        train=TrainConfig(steps=20_000, lr=1e-3, warmup=200, min_lr_ratio=0.1, weight_decay=0.1,
                          betas=(0.9, 0.99), eval_every=500, amp=True),
        batch_size=64,
        description="the target model of chapters 1, 2, 3 and 6 (4.8M parameters)",
    ),
    "shakespeare-draft": LMRecipe(
        model=GPTConfig(vocab_size=84, block_size=256, n_layer=2, n_head=4, n_embd=128, dropout=0.0),
        train=TrainConfig(steps=20_000, lr=2e-3, warmup=200, min_lr_ratio=0.1, weight_decay=0.1,
                          betas=(0.9, 0.99), eval_every=500, amp=True),
        batch_size=64,
        description="the draft model of chapters 2 and 3 (under a tenth of the target's parameters)",
    ),
}


def _steps_for_budget(recipe: LMRecipe, train_ids, device, seconds: float) -> int:
    """How many training steps of ``recipe`` fit in ``seconds`` on ``device``, timed on 100 throwaway
    steps after 20 warm-up steps, with 15 % kept for evaluations and for other jobs sharing the device
    (used once on a GPU to size a recipe; the sidecar records the steps)."""
    probe = GPT(recipe.model).to(device)
    config = replace(recipe.train, steps=121, warmup=0, eval_every=0, progress=False)
    gen = torch.Generator().manual_seed(1)
    marks = []

    def timed_batch(step, _):
        if step in (20, 120):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
        return random_windows(train_ids, recipe.batch_size, recipe.model.block_size, gen, device)

    train(probe, next_token_loss, timed_batch, config)
    per_step = (marks[1] - marks[0]) / 100
    return max(100, int(0.85 * seconds / per_step))


def run_lm_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                  eval_chars: int | None = None, dropout: float | None = None,
                  weight_decay: float | None = None, time_budget: float | None = None) -> dict:
    """Train recipe ``name`` and save it; returns the sidecar metadata.

    ``dropout`` and ``weight_decay`` override the recipe's (for a sweep); ``time_budget`` (seconds)
    replaces ``steps`` by as many as fit in that time on this device. The weights kept are those of the
    evaluation with the lowest NLL on the "select" half of the held-out text (early stopping).
    """
    if name not in RECIPES:
        raise ValueError(f"name: expected one of {sorted(RECIPES)}, got {name!r}")
    recipe = RECIPES[name]
    if dropout is not None:
        recipe = replace(recipe, model=replace(recipe.model, dropout=dropout))
    if weight_decay is not None:
        recipe = replace(recipe, train=replace(recipe.train, weight_decay=weight_decay))
    rank, world = distributed_context()
    seed_everything(recipe.train.seed)
    device = pick_device("cpu" if world > 1 and not torch.cuda.is_available() else None)
    if torch.cuda.is_available() and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    corpus = shakespeare()
    tokenizer = CharTokenizer(_shakespeare_vocab())
    if tokenizer.vocab_size != recipe.model.vocab_size:
        raise RuntimeError(f"corpus vocabulary has {tokenizer.vocab_size} characters, "
                           f"recipe expects {recipe.model.vocab_size}")
    train_ids, val_ids = tokenizer.encode(corpus.train), tokenizer.encode(corpus.val)
    if time_budget:
        steps = _steps_for_budget(recipe, train_ids, device, time_budget)
        seed_everything(recipe.train.seed)
    shorter = {"steps": steps, "warmup": min(recipe.train.warmup, steps)} if steps else {}
    train_config = replace(recipe.train, progress=progress, **shorter)
    select_ids, report_ids = heldout_halves(val_ids)
    if eval_chars:
        select_ids, report_ids = select_ids[:eval_chars], report_ids[:eval_chars]
    train_probe = train_ids[: len(select_ids)]  # a fixed training slice, scored like the held-out one
    model = GPT(recipe.model).to(device)
    get_batch = partial(_windows, train_ids, recipe.batch_size, recipe.model.block_size, device)
    best = {"select_nll": math.inf, "state": None, "step": 0}
    evals = [0]

    def evaluate(m):
        evals[0] += 1
        step = min(evals[0] * (train_config.eval_every or train_config.steps), train_config.steps)
        wide = 128 if device.type == "cuda" else 16  # windows per forward pass when scoring
        metrics = {"chars_seen": step * recipe.batch_size * recipe.model.block_size * world,
                   "train_nll": heldout_nll(m, train_probe, batch_size=wide),
                   "select_nll": heldout_nll(m, select_ids, batch_size=wide)}
        if metrics["select_nll"] < best["select_nll"]:
            best.update(select_nll=metrics["select_nll"], step=step,
                        state={k: v.detach().clone() for k, v in m.state_dict().items()})
        return metrics

    t0 = time.time()
    history = train(model, next_token_loss, get_batch, train_config, evaluate=evaluate)
    if rank != 0:
        return {}
    model.load_state_dict(best["state"])
    scores = {part: heldout_nll(model, ids) for part, ids in
              (("select_nll", select_ids), ("report_nll", report_ids))}
    half = GPT(recipe.model).to(device)
    half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    report_fp16 = heldout_nll(half, report_ids)
    meta = {
        "name": name,
        "description": recipe.description,
        "config": recipe.model.to_dict(),
        "parameters": model.num_params(),
        "tokenizer": {"kind": "char", "vocab": tokenizer.vocab},
        "data": {"source": "shakespeare", "sha256": SOURCES["shakespeare"].sha256,
                 "split": "last 10% of every work held out; its first half selects, its second half reports",
                 "train_chars": len(train_ids), "select_chars": len(select_ids), "report_chars": len(report_ids)},
        "train": {**history["config"], "batch_size": recipe.batch_size, "world_size": world,
                  "early_stopped_at": best["step"], "time_budget": time_budget},
        "metrics": {"select_nll": round(scores["select_nll"], 4), "report_nll": round(scores["report_nll"], 4),
                    "val_nll": round(scores["report_nll"], 4), "report_nll_fp16_weights": round(report_fp16, 4),
                    "report_bits_per_char": round(scores["report_nll"] / math.log(2), 4),
                    "final_train_loss_avg50": _last50(history),
                    "curve": [{"step": s, **{k: round(v, 4) for k, v in m.items()}} for s, m in history["eval"]]},
        **_provenance(name, steps, t0, device),
    }
    if dropout is not None or weight_decay is not None:
        meta["command"] += (f" --dropout {recipe.model.dropout}" if dropout is not None else "") + \
            (f" --weight-decay {recipe.train.weight_decay}" if weight_decay is not None else "")
    save_checkpoint(model, name, meta, directory=out)
    return meta


HEAD_RECIPES: dict[str, dict] = {
    "shakespeare-heads": dict(
        target="shakespeare-target", n_heads=6, batch_size=16,
        train=TrainConfig(steps=2000, lr=2e-3, warmup=100, min_lr_ratio=0.05, weight_decay=0.0, eval_every=500),
        description="early-exit, Medusa and Hydra draft heads on the frozen shakespeare-target (chapter 2)",
    ),
}


def run_heads_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                     eval_chars: int | None = None) -> dict:
    """Distill draft heads of every family (:mod:`arlib.heads`) from the frozen target and save them."""
    recipe = HEAD_RECIPES[name]
    shorter = {"steps": steps, "warmup": min(recipe["train"].warmup, steps)} if steps else {}
    train_config = replace(recipe["train"], progress=progress, **shorter)
    seed_everything(train_config.seed)
    device = pick_device()
    target, tokenizer, target_meta = load_gpt(recipe["target"], device=device)
    for p in target.parameters():
        p.requires_grad_(False)  # frozen: only the heads learn
    corpus = shakespeare()
    train_ids, val_ids = tokenizer.encode(corpus.train), tokenizer.encode(corpus.val)
    block = target.config.block_size
    val_windows = val_ids[: (eval_chars or 64 * block) // block * block].view(-1, block).to(device)  # (N, T)
    heads = DraftHeads(target, recipe["n_heads"]).to(device)
    heads.copy_from(target)
    get_batch = lambda step, gen: random_windows(train_ids, recipe["batch_size"], block, gen, device)[0]  # noqa: E731

    def loss_fn(model, x):
        return sum(model.losses(target, x).values())

    def evaluate(model):
        acc = _acceptance(model, target, val_windows)
        return {"exit_3": acc["exit"][2], "medusa_1": acc["medusa"][0], "hydra_1": acc["hydra"][0],
                "hydra_4": acc["hydra"][3]}

    t0 = time.time()
    before = _acceptance(heads, target, val_windows)
    history = train(heads, loss_fn, get_batch, train_config, evaluate=evaluate)
    after = _acceptance(heads, target, val_windows)
    meta = {
        "name": name,
        "description": recipe["description"],
        "n_heads": recipe["n_heads"],
        "parameters": {k: sum(p.numel() for p in getattr(heads, k).parameters()) for k in ("exits", "medusa", "hydra")},
        "target": {"name": recipe["target"], "config": target.config.to_dict(), "val_nll":
                   target_meta["metrics"]["val_nll"]},
        "tokenizer": {"kind": "char", "vocab": tokenizer.vocab},
        "data": {"source": "shakespeare", "sha256": SOURCES["shakespeare"].sha256,
                 "val_chars_scored": int(val_windows.numel())},
        "train": {**history["config"], "batch_size": recipe["batch_size"], "loss": "soft cross-entropy to the target"},
        "metrics": {"teacher_forced_beta_before": _rounded(before), "teacher_forced_beta": _rounded(after),
                    "final_train_loss_avg50": _last50(history)},
        **_provenance(name, steps, t0, device),
    }
    save_checkpoint(heads, name, meta, directory=out)
    return meta


@torch.no_grad()
def _acceptance(heads, target, windows, batch: int = 16) -> dict[str, list[float]]:
    """Teacher-forced mean beta of every head over ``windows`` (N, T), averaged over batches."""
    parts = [heads.acceptance(target, windows[i:i + batch]) for i in range(0, len(windows), batch)]
    return {k: [sum(p[k][j] for p in parts) / len(parts) for j in range(len(parts[0][k]))] for k in parts[0]}


def _rounded(acc: dict) -> dict:
    return {k: [round(v, 4) for v in vals] for k, vals in acc.items()}


def _last50(history: dict) -> float:
    """Mean training loss over the last 50 steps, rounded for the sidecar."""
    return round(sum(history["loss"][-50:]) / len(history["loss"][-50:]), 4)


def _provenance(name: str, steps: int | None, t0: float, device) -> dict:
    """The sidecar fields that say how a checkpoint was made: dtype, command, wall time, environment."""
    return {
        "stored_dtype": "float16",
        "command": f"python -m arlib.recipes {name}" + (f" --steps {steps}" if steps else ""),
        "wall_seconds": round(time.time() - t0, 1),
        "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                        "machine": platform.machine()},
    }


def _windows(ids, batch_size, block_size, device, step, generator):
    return random_windows(ids, batch_size, block_size, generator, device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arlib.recipes", description=__doc__.splitlines()[0])
    from arlib.asr_recipes import SPEECH_RECIPES, run_speech_recipe  # chapter 5's
    from arlib.sae_recipes import SAE_RECIPES, run_sae_recipe  # chapter 6's
    from arlib.visual_recipes import VISUAL_RECIPES, run_visual_recipe  # chapter 4's checkpoints

    parser.add_argument("name", choices=sorted(RECIPES) + sorted(HEAD_RECIPES) + sorted(VISUAL_RECIPES)
                        + sorted(SPEECH_RECIPES) + sorted(SAE_RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="train for this many steps instead")
    parser.add_argument("--out", default=None, help="folder for the checkpoint (default data/checkpoints)")
    parser.add_argument("--eval-chars", type=int, default=None, help="score only this many validation chars")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--dropout", type=float, default=None, help="language models: override the dropout")
    parser.add_argument("--weight-decay", type=float, default=None, help="language models: override the decay")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="language models: as many steps as fit in this many seconds here")
    args = parser.parse_args(argv)
    lm_only = {k: getattr(args, k) for k in ("dropout", "weight_decay", "time_budget") if getattr(args, k) is not None}
    if lm_only and args.name not in RECIPES:
        parser.error(f"--dropout, --weight-decay and --time-budget apply to {sorted(RECIPES)} only")
    run = run_heads_recipe if args.name in HEAD_RECIPES else run_lm_recipe
    run = run_visual_recipe if args.name in VISUAL_RECIPES else run
    run = run_speech_recipe if args.name in SPEECH_RECIPES else run
    run = run_sae_recipe if args.name in SAE_RECIPES else run
    meta = run(args.name, steps=args.steps, out=args.out, progress=not args.no_progress, eval_chars=args.eval_chars,
               **lm_only)
    if meta and (args.name in VISUAL_RECIPES or args.name in SPEECH_RECIPES or args.name in SAE_RECIPES):
        print(f"{args.name}: {meta['parameters']:,} parameters, {meta['metrics']}, {meta['wall_seconds']} s")
    elif meta and args.name in HEAD_RECIPES:
        print(f"{args.name}: teacher-forced beta {meta['metrics']['teacher_forced_beta']}, {meta['wall_seconds']} s")
    elif meta:
        print(f"{args.name}: {meta['parameters']:,} parameters, held-out NLL {meta['metrics']['report_nll']} nats/char "
              f"(select {meta['metrics']['select_nll']}, stopped at step {meta['train']['early_stopped_at']}), "
              f"{meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
