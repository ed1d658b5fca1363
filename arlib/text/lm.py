"""Language-model data and metrics: random training windows, the next-token loss, held-out NLL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arlib.validate import generator as check_generator
from arlib.validate import ids_in_vocab, int_in_range, positive_int, token_ids


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(getattr(model, "config", None), "block_size"):
        raise TypeError(f"model: expected a language model (a torch module with config.block_size), "
                        f"got {type(model).__name__}")


def random_windows(ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``batch_size`` random windows: inputs x (B, T) and next-token targets y (B, T)."""
    token_ids(ids, "ids", dim=1, expected="a 1-D torch.long tensor of token ids")
    batch_size, block_size = positive_int(batch_size, "batch_size"), positive_int(block_size, "block_size")
    check_generator(generator)
    if len(ids) <= block_size:
        raise ValueError(f"ids: need more than block_size={block_size} tokens, got {len(ids)}")
    starts = torch.randint(0, len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    windows = ids[starts[:, None] + offsets]  # (B, T+1)
    return windows[:, :-1].to(device), windows[:, 1:].to(device)


def heldout_halves(val_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(select, report): the first and second half of held-out ids. The book chooses settings (dropout,
    early stopping, an n-gram's order and discount) on the first and only reports on the second."""
    token_ids(val_ids, "val_ids", dim=1, expected="a 1-D torch.long tensor of at least 2 token ids")
    if len(val_ids) < 2:
        raise ValueError("val_ids: expected a 1-D tensor of at least 2 token ids")
    half = len(val_ids) // 2
    return val_ids[:half], val_ids[half:]


def next_token_loss(model, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of teacher-forced next-token prediction, in nats per token: ``batch`` is
    ``(x, y)``, inputs and targets (B, T) of token ids. The targets' range is checked only where the
    model has a ``config.vocab_size`` (a host sync, as the model's own check of ``x``)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"batch: expected a pair (x, y) of (batch, time) token ids, got {type(batch).__name__}")
    x, y = batch
    if not isinstance(y, torch.Tensor) or not isinstance(x, torch.Tensor) or y.shape != x.shape \
            or y.dtype != torch.long:
        raise ValueError(f"batch: expected targets y of x's shape and dtype torch.long, got x "
                         f"{x.shape if isinstance(x, torch.Tensor) else type(x).__name__}, y {getattr(y, 'shape', y)}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None:
        ids_in_vocab(y, "batch", vocab)
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


@torch.no_grad()
def token_nll(model, ids: torch.Tensor, stride: int | None = None, batch_size: int = 16) -> torch.Tensor:
    """``-log p(x_t | x_<t)`` (nats) for t = 1 .. len(ids) - 1 under ``model``: a float tensor (len(ids) - 1,).

    Windows of the model's full context slide by ``stride`` (default half the context); each scores
    only targets no earlier window scored, so every token after the first is scored exactly once and,
    past the first window, with at least ``context - stride`` tokens of context.
    """
    _check_model(model)
    token_ids(ids, "ids", dim=1, expected="a 1-D torch.long tensor of at least 2 token ids")
    if len(ids) < 2:
        raise ValueError("ids: expected a 1-D tensor of at least 2 token ids")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None:
        ids_in_vocab(ids, "ids", vocab)
    context = model.config.block_size
    stride = context // 2 if stride is None else int_in_range(stride, "stride", 1, context)
    batch_size = positive_int(batch_size, "batch_size")
    n_targets = len(ids) - 1
    width = min(context, n_targets)  # every window has this many inputs
    plan = []  # (start, first scored offset within the window)
    scored_until, start = 0, 0  # targets [0, scored_until) are done (target j is ids[j + 1])
    while scored_until < n_targets:
        start = min(start, n_targets - width)
        plan.append((start, scored_until - start))
        scored_until = start + width
        start += stride
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.empty(n_targets)
    offsets = torch.arange(width + 1)
    for i in range(0, len(plan), batch_size):
        group = plan[i:i + batch_size]
        win = ids[torch.tensor([s for s, _ in group])[:, None] + offsets].to(device)  # (b, width+1)
        logp = torch.log_softmax(model(win[:, :-1]).float(), dim=-1)  # (b, width, V)
        nll = -logp.gather(-1, win[:, 1:, None]).squeeze(-1).cpu()  # (b, width)
        for row, (s, first) in zip(nll, group):
            out[s + first:s + width] = row[first:]
    model.train(was_training)
    return out


def heldout_nll(model, ids: torch.Tensor, stride: int | None = None, batch_size: int = 16) -> float:
    """Mean negative log-likelihood (nats per token) of ``ids`` under ``model``; see :func:`token_nll`."""
    return token_nll(model, ids, stride, batch_size).double().mean().item()
