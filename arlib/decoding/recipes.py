"""Chapter 2's draft heads, distilled from the frozen Shakespeare target, and its EAGLE head
(``python -m arlib.recipes NAME``)."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from arlib.checkpoints import load_model, provenance, save_checkpoint
from arlib.data import SOURCES, shakespeare
from arlib.decoding.draft_heads import DraftHeads
from arlib.decoding.eagle import EagleHead, eagle_acceptance, eagle_losses
from arlib.decoding.tree_decoding import best_choices
from arlib.env import pick_device, seed_everything
from arlib.text.gpt import GPT, GPTConfig
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


def build_eagle_head(meta: dict) -> tuple[EagleHead, dict]:
    """An empty, unattached EAGLE head for the target config the sidecar records (``meta["config"]["target"]``);
    :func:`load_eagle_head` also attaches it to its target."""
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("target"), dict):
        raise ValueError("meta: expected an EAGLE sidecar whose 'config' holds 'target' (a GPT config)")
    return EagleHead(GPTConfig(**config["target"])), {"tokenizer": None}


KINDS = {"draft_heads": build_draft_heads, "eagle_head": build_eagle_head}


HEAD_RECIPES: dict[str, dict] = {
    "shakespeare-heads": dict(
        target="shakespeare-target", n_heads=6, batch_size=16,
        # self-distillation (Medusa's, Cai et al. 2024, sec. 2.3.2): half of every batch is the target's own
        # continuations of training-text prompts, half greedy and half sampled at temperature 1
        own_continuations=1024, own_prompt_chars=32,
        train=TrainConfig(steps=2000, lr=2e-3, warmup=100, min_lr_ratio=0.05, weight_decay=0.0, eval_every=500),
        description="early-exit, Medusa and Hydra heads self-distilled from the frozen shakespeare-target (chapter 2)",
    ),
}


@torch.no_grad()
def own_continuations(target: GPT, ids: torch.Tensor, n: int, prompt_chars: int, generator: torch.Generator,
                      batch: int = 128) -> torch.Tensor:
    """n windows (n, block_size) of the target's own text: ``prompt_chars`` characters of ``ids`` at random
    places, continued by the target to its full context, the first half greedily and the second half sampled at
    temperature 1. Heads trained on them see, after a prompt, the tokens they will be asked to follow in
    greedy and in sampled speculative decoding (Medusa's self-distillation, Cai et al. 2024, sec. 2.3.2)."""
    from arlib.text.sampling import generate

    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    positive_int(n, "n")
    block = target.config.block_size
    positive_int(prompt_chars, "prompt_chars")
    if prompt_chars >= block:
        raise ValueError(f"prompt_chars: expected fewer than the target's {block} context tokens, got {prompt_chars}")
    device = next(target.parameters()).device
    prompts = random_windows(ids, n, prompt_chars, generator, device)[0]  # (n, prompt_chars)
    sample_gen = torch.Generator(device=device).manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    half = n // 2  # rows [0, half) greedy, the rest sampled, whatever the batch size
    out = [generate(target, prompts[i:min(i + batch, half)], block - prompt_chars, greedy=True)
           for i in range(0, half, batch)]
    out += [generate(target, prompts[i:min(i + batch, n)], block - prompt_chars, generator=sample_gen)
            for i in range(half, n, batch)]
    return torch.cat(out)  # (n, block)


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
    device, target, tokenizer, target_meta, train_ids, val_ids = _frozen_target_and_text(recipe, train_config)
    block = target.config.block_size
    val_windows = val_ids[: (eval_chars or 64 * block) // block * block].view(-1, block).to(device)  # (N, T)
    heads = DraftHeads(target, recipe["n_heads"]).to(device)
    heads.copy_from(target)
    t0 = time.time()
    half = recipe["batch_size"] // 2
    n_own = min(recipe["own_continuations"], train_config.steps * half)  # a shortened run needs fewer
    own = own_continuations(target, train_ids, n_own, recipe["own_prompt_chars"],
                            torch.Generator().manual_seed(train_config.seed + 1))  # (N, block)

    def get_batch(step, gen):  # half the target's own text, half the training text
        pick = torch.randint(0, len(own), (half,), generator=gen).to(own.device)
        return torch.cat([own[pick], random_windows(train_ids, recipe["batch_size"] - half, block, gen, device)[0]])

    def loss_fn(model, x):
        return sum(model.losses(target, x).values())

    def evaluate(model):
        acc = _acceptance(model, target, val_windows)
        return {"exit_3": acc["exit"][2], "medusa_1": acc["medusa"][0], "hydra_1": acc["hydra"][0],
                "hydra_4": acc["hydra"][3]}

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
        "train": {**history["config"], "batch_size": recipe["batch_size"], "loss": "soft cross-entropy to the target",
                  "self_distillation": {"continuations": n_own, "greedy": n_own // 2,
                                        "prompt_chars": recipe["own_prompt_chars"], "share_of_each_batch": 0.5}},
        "metrics": {"teacher_forced_beta_before": _rounded(before), "teacher_forced_beta": _rounded(after),
                    "final_train_loss_avg50": mean_last_loss(history)},
        **provenance(name, steps, t0, device),
    }
    save_checkpoint(heads, name, meta, directory=out)
    return meta


def _frozen_target_and_text(recipe: dict, train_config: TrainConfig) -> tuple:
    """Seed, pick the device, load the recipe's target frozen (only the drafter learns) and encode the text:
    ``(device, target, tokenizer, target_meta, train_ids, val_ids)``."""
    seed_everything(train_config.seed)
    device = pick_device()
    target, tokenizer, target_meta = load_gpt(recipe["target"], device=device)
    for p in target.parameters():
        p.requires_grad_(False)
    corpus = shakespeare()
    return device, target, tokenizer, target_meta, tokenizer.encode(corpus.train), tokenizer.encode(corpus.val)


@torch.no_grad()
def _acceptance(heads, target, windows, batch: int = 16) -> dict[str, list[float]]:
    """Teacher-forced mean beta of every head over ``windows`` (N, T), averaged over batches."""
    parts = [heads.acceptance(target, windows[i:i + batch]) for i in range(0, len(windows), batch)]
    return {k: [sum(p[k][j] for p in parts) / len(parts) for j in range(len(parts[0][k]))] for k in parts[0]}


def _rounded(acc):
    """Numbers rounded to 4 decimals, in nested dicts and lists."""
    if isinstance(acc, dict):
        return {k: _rounded(v) for k, v in acc.items()}
    if isinstance(acc, list):
        return [_rounded(v) for v in acc]
    return round(acc, 4)


EAGLE_RECIPES: dict[str, dict] = {
    "shakespeare-eagle": dict(
        target="shakespeare-target", windows=2048, batch_size=16, noise=0.1, w_cls=0.1, eval_depth=5, ranks=4,
        train=TrainConfig(steps=2400, lr=3e-3, warmup=100, min_lr_ratio=0.05, weight_decay=0.0, betas=(0.9, 0.95),
                          clip=0.5, eval_every=600),
        description="an EAGLE head (one block on the frozen shakespeare-target's features; chapter 2)",
    ),
}


@torch.no_grad()
def target_features(target: GPT, windows: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The target's features of ``windows`` (N, T): its final residual stream before ``ln_f``, (N, T, d)
    float16 on the CPU, computed ``batch`` windows at a time (EAGLE trains on such a fixed set)."""
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    batch = positive_int(batch, "batch")
    if not isinstance(windows, torch.Tensor) or windows.dtype != torch.long or windows.dim() != 2:
        raise ValueError(f"windows: expected (N, T) torch.long token ids, got {type(windows).__name__}")
    device = target.wte.weight.device
    parts = [target.trunk(windows[i:i + batch].to(device))[-1].half().cpu() for i in range(0, len(windows), batch)]
    return torch.cat(parts) if parts else torch.empty(0, windows.shape[1], target.config.n_embd, dtype=torch.half)


def run_eagle_recipe(name: str, steps: int | None = None, out: str | None = None, progress: bool = True,
                     eval_chars: int | None = None) -> dict:
    """Train an EAGLE head (:mod:`arlib.decoding.eagle`) on the frozen target's features and save it.

    As EAGLE does (Li et al. 2024a, section 5), the features are computed once on a fixed set of training
    text (``windows`` windows of the target's context, evenly spaced over the training split) and the head
    is trained over them for several epochs, teacher-forced, with uniform noise U(-0.1, 0.1) on the input
    features and loss smooth-L1 + 0.1 cross-entropy. Deviations, for a CPU and a 4.8M-parameter target:
    2048 windows of 256 characters (524k, 12 % of the split) instead of 68k ShareGPT dialogues; 2400 steps of
    16 windows (19 epochs, the paper trains 20) with AdamW at lr 3e-3 (100 steps of warm-up, cosine to 5 %)
    instead of 3e-5 with linear decay; the gradient's norm clipped at 0.5 instead of its values. About 15
    minutes on one CPU thread. The sidecar
    records teacher-forced agreement with the target per depth (depth > 1 reads the head's own features)
    on held-out text, and the static tree :func:`arlib.decoding.tree_decoding.best_choices` picks from it."""
    if name not in EAGLE_RECIPES:
        raise ValueError(f"name: expected one of {sorted(EAGLE_RECIPES)}, got {name!r}")
    if steps is not None:
        positive_int(steps, "steps")
    if eval_chars is not None:
        positive_int(eval_chars, "eval_chars")
    recipe = EAGLE_RECIPES[name]
    shorter = {"steps": steps, "warmup": min(recipe["train"].warmup, steps),
               "eval_every": min(recipe["train"].eval_every, steps)} if steps else {}
    train_config = replace(recipe["train"], progress=progress, **shorter)
    device, target, tokenizer, target_meta, train_ids, val_ids = _frozen_target_and_text(recipe, train_config)
    block = target.config.block_size
    n_windows = recipe["windows"] if steps is None else min(recipe["windows"], 4 * recipe["batch_size"])
    starts = torch.linspace(0, len(train_ids) - block, n_windows).long()  # evenly spaced over the split
    windows = train_ids[starts[:, None] + torch.arange(block)]  # (N, T)
    t0 = time.time()
    features = target_features(target, windows)  # (N, T, d) float16
    feature_seconds = round(time.time() - t0, 1)
    val_windows = val_ids[: (eval_chars or 64 * block) // block * block].view(-1, block).to(device)  # (M, T)
    val_features = target_features(target, val_windows).to(device)
    head = EagleHead(target).to(device)

    def get_batch(step, gen):
        rows = torch.randint(0, len(windows), (recipe["batch_size"],), generator=gen)
        return windows[rows].to(device), features[rows].to(device)

    def loss_fn(model, batch):
        return eagle_losses(model, *batch, noise=recipe["noise"], w_cls=recipe["w_cls"])["loss"]

    def agreement(model, rows=None):
        x, f = (val_windows, val_features) if rows is None else (val_windows[:rows], val_features[:rows])
        return _eagle_agreement(model, x, f, recipe["eval_depth"], recipe["ranks"])

    def evaluate(model):
        acc = agreement(model, 16)
        return {"top1_depth1": acc["top1"][0], "top1_depth2": acc["top1"][1], "beta_depth1": acc["beta"][0]}

    before = agreement(head)
    history = train(head, loss_fn, get_batch, train_config, evaluate=evaluate)
    after = agreement(head)
    curve = [round(sum(history["loss"][i:i + 100]) / len(history["loss"][i:i + 100]), 4)
             for i in range(0, len(history["loss"]), 100)]
    meta = {
        "name": name,
        "kind": "eagle_head",
        "config": {"target": target.config.to_dict()},
        "description": recipe["description"],
        "parameters": sum(p.numel() for p in head.parameters()),
        "feature": "the target's final residual stream before ln_f; LM head = ln_f then the tied wte",
        "target": {"name": recipe["target"], "config": target.config.to_dict(), "report_nll":
                   target_meta["metrics"]["report_nll"]},
        "tokenizer": {"kind": "char", "vocab": tokenizer.vocab},
        "data": {"source": "shakespeare", "sha256": SOURCES["shakespeare"].sha256,
                 "train_windows": n_windows, "train_chars": int(windows.numel()),
                 "feature_seconds": feature_seconds, "val_chars_scored": int(val_windows.numel())},
        "train": {**history["config"], "batch_size": recipe["batch_size"], "noise": recipe["noise"],
                  "w_cls": recipe["w_cls"], "loss": "smooth L1 to the next feature + w_cls soft cross-entropy "
                  "to the target's next-token distribution (teacher-forced, noisy input features)"},
        "metrics": {"teacher_forced_before": _rounded(before), "teacher_forced": _rounded(after),
                    "static_choices_20": [list(c) for c in best_choices(torch.tensor(after["rank_accuracy"]), 20)],
                    "loss_per_100_steps": curve, "final_train_loss_avg50": mean_last_loss(history),
                    "eval": [(s, {k: round(v, 4) for k, v in m.items()}) for s, m in history["eval"]]},
        **provenance(name, steps, t0, device),
    }
    save_checkpoint(head, name, meta, directory=out)
    return meta


@torch.no_grad()
def _eagle_agreement(head, windows, features, depth: int, ranks: int, batch: int = 16) -> dict:
    """:func:`arlib.decoding.eagle.eagle_acceptance` over ``windows`` (N, T), averaged over batches."""
    head.eval()
    parts = [eagle_acceptance(head, windows[i:i + batch], features[i:i + batch], depth, ranks)
             for i in range(0, len(windows), batch)]
    mean = lambda key: torch.tensor([p[key] for p in parts]).mean(0).tolist()  # noqa: E731
    return {"top1": mean("top1"), "beta": mean("beta"), "rank_accuracy": mean("rank_accuracy")}


def load_eagle_head(target: GPT, name: str = "shakespeare-eagle", directory: str | None = None) -> EagleHead:
    """The EAGLE head of checkpoint ``name``, attached to ``target`` (on its device, eval mode)."""
    if not isinstance(target, GPT):
        raise TypeError(f"target: expected an arlib.text.gpt.GPT, got {type(target).__name__}")
    model, _, _ = load_model(name, build_eagle_head, target.wte.weight.device, directory, kind="eagle_head")
    return model.attach(target)


RECIPES = {name: Recipe(name, "draft_heads", {"n_heads": r["n_heads"], "target": r["target"]}, r["train"],
                        run_heads_recipe, r["description"]) for name, r in HEAD_RECIPES.items()}
RECIPES.update({name: Recipe(name, "eagle_head", {"target": r["target"]}, r["train"], run_eagle_recipe,
                             r["description"]) for name, r in EAGLE_RECIPES.items()})
