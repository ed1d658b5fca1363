"""Chapter 2's draft heads, distilled from the frozen Shakespeare target (``python -m arlib.recipes NAME``)."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from arlib.checkpoints import provenance, save_checkpoint
from arlib.data import SOURCES, shakespeare
from arlib.decoding.draft_heads import DraftHeads
from arlib.env import pick_device, seed_everything
from arlib.text.gpt import GPTConfig
from arlib.text.lm import random_windows
from arlib.text.recipes import load_gpt
from arlib.train import Recipe, TrainConfig, mean_last_loss, train
from arlib.validate import positive_int


def build_draft_heads(meta: dict) -> tuple[DraftHeads, dict]:
    """Empty heads for the target config the sidecar records (``meta["config"]`` holds ``target``, the
    target's GPT config, and ``n_heads``)."""
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("target"), dict) or "n_heads" not in config:
        raise ValueError("meta: expected a draft-heads sidecar whose 'config' holds 'target' (a GPT config) and "
                         "'n_heads'")
    return DraftHeads(GPTConfig(**config["target"]), config["n_heads"]), {"tokenizer": None}


KINDS = {"draft_heads": build_draft_heads}


HEAD_RECIPES: dict[str, dict] = {
    "shakespeare-heads": dict(
        target="shakespeare-target", n_heads=6, batch_size=16,
        train=TrainConfig(steps=2000, lr=2e-3, warmup=100, min_lr_ratio=0.05, weight_decay=0.0, eval_every=500),
        description="early-exit, Medusa and Hydra draft heads on the frozen shakespeare-target (chapter 2)",
    ),
}


def run_heads_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                     eval_chars: int | None = None) -> dict:
    """Distill draft heads of every family (:mod:`arlib.decoding.draft_heads`) from the frozen target and save them."""
    if name not in HEAD_RECIPES:
        raise ValueError(f"name: expected one of {sorted(HEAD_RECIPES)}, got {name!r}")
    if steps is not None:
        positive_int(steps, "steps")
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
        "kind": "draft_heads",
        "config": {"n_heads": recipe["n_heads"], "target": target.config.to_dict()},
        "description": recipe["description"],
        "n_heads": recipe["n_heads"],
        "parameters": {k: sum(p.numel() for p in getattr(heads, k).parameters()) for k in ("exits", "medusa", "hydra")},
        "target": {"name": recipe["target"], "config": target.config.to_dict(), "report_nll":
                   target_meta["metrics"]["report_nll"]},
        "tokenizer": {"kind": "char", "vocab": tokenizer.vocab},
        "data": {"source": "shakespeare", "sha256": SOURCES["shakespeare"].sha256,
                 "val_chars_scored": int(val_windows.numel())},
        "train": {**history["config"], "batch_size": recipe["batch_size"], "loss": "soft cross-entropy to the target"},
        "metrics": {"teacher_forced_beta_before": _rounded(before), "teacher_forced_beta": _rounded(after),
                    "final_train_loss_avg50": mean_last_loss(history)},
        **provenance(name, steps, t0, device),
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


RECIPES = {name: Recipe(name, "draft_heads", {"n_heads": r["n_heads"], "target": r["target"]}, r["train"],
                        run_heads_recipe, r["description"]) for name, r in HEAD_RECIPES.items()}
