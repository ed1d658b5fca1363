"""Argument checks shared by the speech modules (private: the public ones are :mod:`arlib.validate`'s)."""

from __future__ import annotations

import torch

from arlib.validate import describe, is_int


def index_tensor(x) -> bool:
    """Is ``x`` a tensor of an integer dtype (not floating, complex or bool)?"""
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool


def lengths(values, name: str, B: int, low: int, high: int, device=None) -> torch.Tensor:
    """``values`` as a (B,) long tensor on ``device``: an integer tensor or a sequence of ints, each in
    ``[low, high]``; else ``ValueError`` naming the argument (fractional lengths are refused, not truncated)."""
    if isinstance(values, torch.Tensor):
        out = values if index_tensor(values) and values.dim() == 1 else None
    else:
        try:
            items = list(values)
        except TypeError:
            items = None
        out = torch.tensor(items, dtype=torch.long) if items is not None and all(is_int(n) for n in items) \
            else None
    if out is None or out.shape != (B,) or (out < low).any() or (out > high).any():
        shown = values.tolist() if isinstance(values, torch.Tensor) and values.numel() <= 16 else \
            describe(values) if isinstance(values, torch.Tensor) else repr(values)[:80]
        raise ValueError(f"{name}: expected {B} integer lengths in [{low}, {high}], got {shown}")
    return out.to(device if device is not None else out.device).long()


def memory(memory, memory_lengths, d: int) -> torch.Tensor:
    """The encoder's output (B, S, d) and its lengths (B,) in [1, S]; returns the lengths as a long tensor."""
    if not isinstance(memory, torch.Tensor) or not memory.is_floating_point() or memory.dim() != 3 \
            or memory.shape[2] != d or not memory.shape[0]:
        raise ValueError(f"memory: expected the encoder's output, a float tensor (B, S, {d}) with B >= 1, "
                         f"got {describe(memory)}")
    return lengths(memory_lengths, "memory_lengths", memory.shape[0], 1, memory.shape[1], memory.device)
