"""Chapter 1's language models: the Shakespeare target and draft GPTs (``python -m arlib.recipes NAME``).

A recipe is deterministic for a given device and thread count (fixed seeds, fixed data order) and
writes ``NAME.safetensors`` with its JSON sidecar. Under ``torchrun --nproc_per_node N`` the same
command trains data-parallel (each rank draws its own batches; rank 0 evaluates and saves).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from functools import partial

import torch

from arlib.checkpoints import load_model, provenance, save_checkpoint
from arlib.data import SOURCES, shakespeare
from arlib.env import pick_device, seed_everything
from arlib.text.gpt import GPT, GPTConfig
from arlib.text.lm import heldout_halves, heldout_nll, next_token_loss, random_windows
from arlib.text.tokenizer import CharTokenizer
from arlib.train import Recipe, TrainConfig, distributed_context, mean_last_loss, train
from arlib.validate import number_in, positive_int


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

    def __post_init__(self):
        if not isinstance(self.model, GPTConfig):
            raise TypeError(f"model: expected GPTConfig, got {type(self.model).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train: expected TrainConfig, got {type(self.train).__name__}")
        object.__setattr__(self, "batch_size", positive_int(self.batch_size, "batch_size"))
        if not isinstance(self.description, str):
            raise TypeError(f"description: expected a string, got {type(self.description).__name__}")


def build_gpt(meta: dict) -> tuple[GPT, dict]:
    """An empty GPT of the sidecar's config, and the character tokenizer it reads. A sidecar that does not
    describe a GPT (no ``config`` of GPTConfig's fields, no ``tokenizer.vocab``) raises ``ValueError``."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta: expected a sidecar dict, got {type(meta).__name__}")
    config, tokenizer = meta.get("config"), meta.get("tokenizer")
    vocab = tokenizer.get("vocab") if isinstance(tokenizer, dict) else None
    if not isinstance(config, dict):
        raise ValueError("meta: expected a 'config' dict of GPTConfig's fields (is this a GPT checkpoint?)")
    unknown = sorted(set(config) - set(GPTConfig.__dataclass_fields__))
    if unknown or "vocab_size" not in config:
        raise ValueError(f"meta: the config is not a GPT's (unknown fields {unknown}, expected some of "
                         f"{sorted(GPTConfig.__dataclass_fields__)} with vocab_size); is this a GPT checkpoint?")
    if not isinstance(vocab, str):
        raise ValueError("meta: expected a character tokenizer ('tokenizer': {'vocab': ...}); is this a GPT "
                         "checkpoint?")
    return GPT(GPTConfig(**config)), {"tokenizer": CharTokenizer(vocab)}


KINDS = {"gpt": build_gpt}


def load_gpt(name: str, device=None, directory=None) -> tuple[GPT, CharTokenizer, dict]:
    """A GPT checkpoint as float32 in eval mode: ``(model, tokenizer, meta)`` (for the parts above text;
    readers use :func:`arlib.load`)."""
    model, meta, extras = load_model(name, build_gpt, device, directory, kind="gpt")
    return model, extras["tokenizer"], meta


def _shakespeare_vocab() -> str:
    return CharTokenizer.from_text(shakespeare().text).vocab  # 84 characters


LM_RECIPES: dict[str, LMRecipe] = {
    "shakespeare-target": LMRecipe(
        model=GPTConfig(vocab_size=84, block_size=256, n_layer=6, n_head=8, n_embd=256, dropout=0.05),
        train=TrainConfig(steps=4885, lr=1e-3, warmup=200, min_lr_ratio=0.1, weight_decay=0.1,
                          betas=(0.9, 0.99), eval_every=500, amp=True),
        batch_size=64,
        description="the target model of chapters 1, 2, 3 and 6 (4.8M parameters)",
    ),
    "shakespeare-draft": LMRecipe(
        model=GPTConfig(vocab_size=84, block_size=256, n_layer=2, n_head=4, n_embd=128, dropout=0.0),
        train=TrainConfig(steps=8673, lr=2e-3, warmup=200, min_lr_ratio=0.1, weight_decay=0.1,
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
    if not isinstance(name, str) or name not in LM_RECIPES:
        raise ValueError(f"name: expected one of {sorted(LM_RECIPES)}, got {name!r}")
    if steps is not None:
        steps = positive_int(steps, "steps")
    if eval_chars is not None:
        positive_int(eval_chars, "eval_chars")
    if time_budget is not None:
        number_in(time_budget, "time_budget", 0, float("inf"), bounds="()", expected="a number of seconds > 0")
    if weight_decay is not None:
        number_in(weight_decay, "weight_decay", 0, float("inf"), bounds="[)", expected="a finite number >= 0")
    recipe = LM_RECIPES[name]
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
        "kind": "gpt",
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
                    "report_nll_fp16_weights": round(report_fp16, 4),
                    "report_bits_per_char": round(scores["report_nll"] / math.log(2), 4),
                    "final_train_loss_avg50": mean_last_loss(history),
                    "curve": [{"step": s, **{k: round(v, 4) for k, v in m.items()}} for s, m in history["eval"]]},
        **provenance(name, steps, t0, device),
    }
    if dropout is not None or weight_decay is not None:
        meta["command"] += (f" --dropout {recipe.model.dropout}" if dropout is not None else "") + \
            (f" --weight-decay {recipe.train.weight_decay}" if weight_decay is not None else "")
    save_checkpoint(model, name, meta, directory=out)
    return meta


def _windows(ids, batch_size, block_size, device, step, generator):
    return random_windows(ids, batch_size, block_size, generator, device)


RECIPES = {name: Recipe(name, "gpt", r.model, r.train, run_lm_recipe, r.description) for name, r in LM_RECIPES.items()}
