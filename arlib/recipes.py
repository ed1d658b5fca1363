"""Recipes that train the book's committed checkpoints: ``python -m arlib.recipes NAME``.

A recipe is deterministic for a given device and thread count (fixed seeds, fixed data order) and
writes ``data/checkpoints/NAME.safetensors`` with its JSON sidecar. ``--steps`` shortens a run (tests
use a few steps); ``--out`` writes elsewhere. Under ``torchrun --nproc_per_node N`` the same command
trains data-parallel (each rank draws its own batches; rank 0 evaluates and saves).
"""

from __future__ import annotations

import argparse
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
    """A character GPT trained on Shakespeare's training split, scored on the validation split."""

    model: GPTConfig
    train: TrainConfig
    batch_size: int
    description: str


def _shakespeare_vocab() -> str:
    return CharTokenizer.from_text(shakespeare().text).vocab  # 84 characters


RECIPES: dict[str, LMRecipe] = {
    "shakespeare-target": LMRecipe(
        model=GPTConfig(vocab_size=84, block_size=256, n_layer=6, n_head=8, n_embd=256),
        train=TrainConfig(steps=1500, lr=1e-3, warmup=100, min_lr_ratio=0.05, eval_every=250),
        batch_size=16,
        description="the target model of chapters 2, 3 and 6 (4.8M parameters)",
    ),
    "shakespeare-draft": LMRecipe(
        model=GPTConfig(vocab_size=84, block_size=256, n_layer=2, n_head=4, n_embd=128),
        train=TrainConfig(steps=1500, lr=2e-3, warmup=100, min_lr_ratio=0.05, eval_every=250),
        batch_size=32,
        description="the draft model of chapters 2 and 3 (under a tenth of the target's parameters)",
    ),
}


def run_lm_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                  eval_chars: int | None = None) -> dict:
    """Train recipe ``name`` and save it; returns the sidecar metadata."""
    if name not in RECIPES:
        raise ValueError(f"name: expected one of {sorted(RECIPES)}, got {name!r}")
    recipe = RECIPES[name]
    shorter = {"steps": steps, "warmup": min(recipe.train.warmup, steps)} if steps else {}
    train_config = replace(recipe.train, progress=progress, **shorter)
    rank, world = distributed_context()
    seed_everything(train_config.seed)
    device = pick_device("cpu" if world > 1 and not torch.cuda.is_available() else None)
    if torch.cuda.is_available() and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    corpus = shakespeare()
    tokenizer = CharTokenizer(_shakespeare_vocab())
    if tokenizer.vocab_size != recipe.model.vocab_size:
        raise RuntimeError(f"corpus vocabulary has {tokenizer.vocab_size} characters, "
                           f"recipe expects {recipe.model.vocab_size}")
    train_ids, val_ids = tokenizer.encode(corpus.train), tokenizer.encode(corpus.val)
    if eval_chars:
        val_ids = val_ids[:eval_chars]
    quick_val = val_ids[: 20_000]
    model = GPT(recipe.model).to(device)
    get_batch = partial(_windows, train_ids, recipe.batch_size, recipe.model.block_size, device)
    t0 = time.time()
    history = train(model, next_token_loss, get_batch, train_config,
                    evaluate=lambda m: {"val_nll_20k": heldout_nll(m, quick_val)})
    if rank != 0:
        return {}
    val_nll = heldout_nll(model, val_ids)
    half = GPT(recipe.model).to(device)
    half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    val_nll_fp16 = heldout_nll(half, val_ids)
    meta = {
        "name": name,
        "description": recipe.description,
        "config": recipe.model.to_dict(),
        "parameters": model.num_params(),
        "tokenizer": {"kind": "char", "vocab": tokenizer.vocab},
        "data": {"source": "shakespeare", "sha256": SOURCES["shakespeare"].sha256,
                 "split": "last 10% of every work held out", "train_chars": len(train_ids),
                 "val_chars_scored": len(val_ids)},
        "train": {**history["config"], "batch_size": recipe.batch_size, "world_size": world},
        "metrics": {"val_nll": round(val_nll, 4), "val_nll_fp16_weights": round(val_nll_fp16, 4),
                    "val_bits_per_char": round(val_nll / 0.6931471805599453, 4),
                    "final_train_loss_avg50": _last50(history), "eval_curve": history["eval"]},
        **_provenance(name, steps, t0, device),
    }
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
    args = parser.parse_args(argv)
    run = run_heads_recipe if args.name in HEAD_RECIPES else run_lm_recipe
    run = run_visual_recipe if args.name in VISUAL_RECIPES else run
    run = run_speech_recipe if args.name in SPEECH_RECIPES else run
    run = run_sae_recipe if args.name in SAE_RECIPES else run
    meta = run(args.name, steps=args.steps, out=args.out, progress=not args.no_progress, eval_chars=args.eval_chars)
    if meta and (args.name in VISUAL_RECIPES or args.name in SPEECH_RECIPES or args.name in SAE_RECIPES):
        print(f"{args.name}: {meta['parameters']:,} parameters, {meta['metrics']}, {meta['wall_seconds']} s")
    elif meta and args.name in HEAD_RECIPES:
        print(f"{args.name}: teacher-forced beta {meta['metrics']['teacher_forced_beta']}, {meta['wall_seconds']} s")
    elif meta:
        print(f"{args.name}: {meta['parameters']:,} parameters, val NLL {meta['metrics']['val_nll']} nats/char, "
              f"{meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
