"""The book's one training loop: AdamW, linear warm-up then cosine decay, gradient clipping, tqdm,
safetensors checkpoints, and data-parallel training under ``torchrun`` with no change to the code.

Every model in the book trains through :func:`train`; a chapter supplies a ``loss_fn(model, batch)``
and a ``get_batch(step, generator)``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from arlib.validate import describe, int_at_least, int_in_range, is_number, number_in, positive_int


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    eval_every: int = 0  # 0: evaluate only at the end
    seed: int = 0
    progress: bool = True
    amp: bool = False  # bf16 autocast of the forward pass on CUDA (ignored elsewhere)

    def __post_init__(self):
        inf = math.inf
        self.steps = positive_int(self.steps, "steps")
        number_in(self.lr, "lr", 0, inf, bounds="()", expected="a positive learning rate")
        self.warmup = int_in_range(self.warmup, "warmup", 0, self.steps,
                                   expected=f"an int in [0, steps={self.steps}]")
        number_in(self.min_lr_ratio, "min_lr_ratio", 0, 1)
        number_in(self.clip, "clip", 0, inf, bounds="()", expected="a positive max gradient norm")
        number_in(self.weight_decay, "weight_decay", 0, inf, bounds="[)", expected="a non-negative number")
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(is_number(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.eval_every = int_at_least(self.eval_every, "eval_every", 0)
        self.seed = int_at_least(self.seed, "seed", 0, expected="a non-negative int")
        if not isinstance(self.amp, bool):
            raise ValueError(f"amp: expected True or False (bf16 autocast on CUDA), got {self.amp!r}")


@dataclass(frozen=True)
class Recipe:
    """How one committed checkpoint is trained: ``run(name, steps=None, out=None, progress=True, **options)``
    trains it and returns its sidecar (an empty dict or None on ranks other than 0 under ``torchrun``).
    Every part of the package lists its recipes as ``RECIPES: dict[str, Recipe]``; ``python -m
    arlib.recipes`` gathers them."""

    name: str
    kind: str  # the sidecar's kind: which class arlib.load builds
    config: Any  # the model's settings
    train: TrainConfig
    run: Callable[..., dict | None]
    description: str

    def __post_init__(self):
        for field in ("name", "kind", "description"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise TypeError(f"{field}: expected a non-empty string, got {getattr(self, field)!r}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train: expected TrainConfig, got {type(self.train).__name__}")
        if not callable(self.run):
            raise TypeError(f"run: expected a function run(name, steps=None, out=None, progress=True, **options), "
                            f"got {type(self.run).__name__}")


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    int_at_least(step, "step", 0)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected TrainConfig, got {type(config).__name__}")
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


def distributed_context() -> tuple[int, int]:
    """(rank, world_size); starts the process group when launched by ``torchrun``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE: expected a positive int (set by torchrun), got {os.environ['WORLD_SIZE']!r}") \
            from None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return rank, world


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    # Weight decay on matrices only; biases, norms and embeddings' 1-D params are not decayed.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel for the whole update on CUDA (the per-tensor loop costs launches on small models).
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)


_SYNC_EVERY = 50  # steps between reads of the loss: on an accelerator each read makes the host wait


class LossNotFinite(FloatingPointError, ValueError):
    """The loss became NaN or inf: a ``FloatingPointError`` (as it always was) and a ``ValueError``; the
    message names ``loss_fn`` and the step (a learning rate too large, or bad data, are the usual causes)."""


def _flush(pending: list, history: dict, bar) -> None:
    """Read the pending losses back in one transfer, append them, and stop on a non-finite one."""
    values = torch.stack(pending).float().cpu().tolist()
    first_step = len(history["loss"])
    pending.clear()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise LossNotFinite(f"loss_fn: the loss became {value} at step {first_step + offset}")
    history["loss"].extend(values)
    bar.set_postfix(loss=f"{values[-1]:.3f}", refresh=False)


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    get_batch: Callable[[int, torch.Generator], Any],
    config: TrainConfig,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
) -> dict:
    """Train ``model`` in place and return its history.

    ``get_batch(step, generator)`` returns a batch on the model's device; under ``torchrun`` every rank
    gets its own generator (seed + rank), so ranks see different data and gradients are averaged.
    ``evaluate(model)`` (optional) returns a dict of metrics, run every ``eval_every`` steps and at the end.
    History: ``{"step": [...], "loss": [...], "lr": [...], "eval": [(step, metrics), ...], "seconds": s}``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected TrainConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise TypeError(f"model: expected a torch module with trainable parameters, got {type(model).__name__}")
    for name, fn in (("loss_fn", loss_fn), ("get_batch", get_batch)):
        if not callable(fn):
            raise TypeError(f"{name}: expected a function, got {type(fn).__name__}")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate: expected a function or None, got {type(evaluate).__name__}")
    rank, world = distributed_context()
    net = model
    if world > 1:
        device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    generator = torch.Generator().manual_seed(config.seed + rank)
    optimizer = _optimizer(model, config)
    autocast = config.amp and next(model.parameters()).is_cuda
    history: dict = {"step": [], "loss": [], "lr": [], "eval": [], "world_size": world}
    pending: list[torch.Tensor] = []  # losses not yet read back: one host sync per _SYNC_EVERY steps
    start = time.perf_counter()
    bar = tqdm(range(config.steps), disable=not config.progress or rank != 0, desc="train", mininterval=2.0)
    model.train()
    for step in bar:
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = get_batch(step, generator)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(net, batch)
        if step == 0 and not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad):
            raise ValueError(f"loss_fn: expected a scalar tensor with a gradient, got {describe(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        history["step"].append(step)
        history["lr"].append(lr)
        pending.append(loss.detach())
        last = step == config.steps - 1
        due = last or (config.eval_every and (step + 1) % config.eval_every == 0)
        at_eval = evaluate is not None and rank == 0 and due
        if last or at_eval or len(pending) == _SYNC_EVERY:
            _flush(pending, history, bar)
        if at_eval:
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            if not isinstance(metrics, dict):
                raise TypeError(f"evaluate: expected a dict of metrics, got {type(metrics).__name__}")
            model.train()
            history["eval"].append((step + 1, metrics))
            if config.progress:
                bar.write(f"step {step + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    model.eval()
    history["seconds"] = time.perf_counter() - start
    history["config"] = asdict(config)
    return history


def mean_last_loss(history: dict, n: int = 50) -> float:
    """Mean training loss over the last ``n`` steps of a :func:`train` history, rounded for a sidecar."""
    n = positive_int(n, "n")
    if not isinstance(history, dict) or not isinstance(history.get("loss"), list):
        raise ValueError("history: expected a train() history, a dict with a list 'loss'")
    tail = history["loss"][-n:]
    if not tail:
        raise ValueError("history: expected at least one recorded loss")
    return round(sum(tail) / len(tail), 4)
