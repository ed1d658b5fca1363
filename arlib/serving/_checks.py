"""Argument checks shared by the caches of :mod:`arlib.serving` (private)."""

from __future__ import annotations

import torch

from arlib.validate import describe, int_in_range


def attend_args(layer, n_layers: int, q, k, v, batch_size: int, kv_heads: int, head_dim: int, room: int) -> None:
    """The arguments of a cache's ``attend``: ``layer`` in [0, n_layers), q (B, H, T, D), k and v
    (B, H_kv, T, D) of this cache's batch, key/value heads and head dimension, and at most ``room`` new
    positions. Shapes only: no pass over the data (``attend`` runs for every layer of every step)."""
    int_in_range(layer, "layer", 0, n_layers - 1)
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[0] != batch_size or q.shape[3] != head_dim \
            or q.shape[1] % kv_heads:
        raise ValueError(f"q: expected a tensor ({batch_size}, H, T, {head_dim}) with H a multiple of "
                         f"{kv_heads}, got {describe(q)}")
    shape = (batch_size, kv_heads, q.shape[2], head_dim)
    for name, x in (("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected a tensor {shape} (batch, key/value heads, new positions, head "
                             f"dimension), got {describe(x)}")
    if q.shape[2] > room:
        raise ValueError(f"q: {q.shape[2]} new positions exceed the {room} left in the cache")


def device_dtype(device, dtype) -> None:
    """A cache's ``device`` (None, a ``torch.device`` or a name such as ``"cuda:0"``) and floating ``dtype``."""
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device: expected None, a torch.device or a device name such as 'cpu', "
                             f"got {device!r}") from None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch.dtype such as torch.float32, got {dtype!r}")
