"""Quantized KV caches: group-wise asymmetric integer quantization and KIVI (chapter 7).

Paper: Liu, Yuan, Jin, Zhong, Xu, Braverman, Chen and Hu, "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache" (ICML 2024, arXiv 2402.02750). Reference code: jy-yuan/KIVI on GitHub,
``models/llama_kivi.py`` at commit 04eeae0 (``LlamaAttention_KIVI.forward``) and the Triton kernel
``quant/new_pack.py`` (``triton_quantize_and_pack_along_last_dim``) that it calls.

**The quantizer** (KIVI's group-wise asymmetric round-to-nearest quantization). A group G of consecutive
entries is stored as integer codes ``q = round((x - min G) / s)`` in ``[0, 2^b - 1]`` with step (scale)
``s = (max G - min G) / (2^b - 1)``, and read back as ``q s + min G`` (:func:`quantize`, :func:`dequantize`).
Round-to-nearest puts every entry within half a step of its reconstruction: ``|x - deq(q(x))| <= s / 2``.
A constant group has ``s = 0`` and comes back exactly.

**The two groupings** of a cache tensor (B, H, T, D), as KIVI defines them in its study of the key and
value distributions:

* per token (``"token"``): the statistics run over the channels of one token, in groups of ``group_size``
  channels (``axis=-1``); what KIVI does with values;
* per channel (``"channel"``): the statistics run over ``group_size`` consecutive tokens of one channel
  (``axis=-2``); what KIVI does with keys, whose few outlier channels would otherwise stretch the range of
  every token's group.

**KIVI's cache** (Algorithm 1 and the reference ``forward``), :class:`QuantizedCache`: keys are quantized
per channel, values per token, both at ``bits`` bits; the most recent tokens stay in full precision.

* Keys wait in a full-precision residual; once it holds ``residual`` tokens (a multiple of ``group_size``),
  they are quantized per channel together, ``residual / group_size`` groups of tokens, and the residual
  empties. A prefill of T tokens quantizes its first ``T - T % residual`` (KeyQuant in Algorithm 1).
* Values are quantized per token as they leave the window of the ``residual`` most recent tokens.
* Every call attends first, then quantizes (the order of the reference ``forward``): the prefill's
  queries see its keys and values in full precision (Algorithm 1: Prefill returns X_K, X_V unquantized),
  and a decoding step sees its own token in full precision. Algorithm 1's Decoding step quantizes a
  completed key group before it attends; the two differ for one step per group.

The chapter can swap the groupings (``key_grouping="token"``, ``value_grouping="channel"``) to measure KIVI's
observation that keys want per-channel and values per-token quantization; a tensor quantized per
channel always waits in the residual until a whole group of tokens is there, one quantized per token leaves
it as soon as it is older than the ``residual`` most recent.

**What is stored, and what is counted.** KIVI packs the codes into 32-bit words and keeps the scale and
minimum of every group in float16 (the reference runs in float16). The book keeps the *dequantized* values
in the float tensor the model attends over, a simplification of the book's, so that attention needs no
mixed-precision kernel; :meth:`QuantizedCache.stored_bytes` counts exactly what the packed form takes:
codes at ``bits`` bits each, two float16 numbers (scale and minimum) per group, and the full-precision
residual at the cache's element size. The book's :func:`quantize` also keeps the scale and minimum in the
input's dtype (it does not round them to float16), so that the ``s / 2`` bound holds as stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from arlib.serving._checks import attend_args, device_dtype
from arlib.text.gpt import GPT, GPTConfig, KVCache
from arlib.validate import describe, int_at_least, int_in_range, positive_int, token_ids

__all__ = ["GROUPINGS", "STAT_BYTES", "Quantized", "quantize", "dequantize", "grouping_axis", "quantize_kv",
           "fake_quantize", "quantized_bits", "relative_error", "capture_kv", "QuantizedCache"]

GROUPINGS = ("token", "channel")  # statistics over the channels of a token, or over tokens of a channel
STAT_BYTES = 2  # each group's scale and minimum are counted as float16, as KIVI stores them


# --- the quantizer --------------------------------------------------------------------------------


@dataclass
class Quantized:
    """A tensor quantized in groups of ``group_size`` consecutive entries along ``axis``.

    ``codes`` (uint8, the input's shape) hold integers in [0, 2^bits - 1]; ``scale`` and ``zero`` (the
    group's step and minimum) have the input's shape with ``axis`` shortened to the number of groups."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    axis: int  # non-negative
    group_size: int

    def __post_init__(self):
        if not isinstance(self.codes, torch.Tensor) or self.codes.dtype != torch.uint8 or self.codes.dim() == 0:
            raise ValueError(f"codes: expected a uint8 tensor with at least one dimension, got {describe(self.codes)}")
        int_in_range(self.bits, "bits", 1, 8, expected="an int in [1, 8] (codes are stored as uint8)")
        int_in_range(self.axis, "axis", 0, self.codes.dim() - 1)
        positive_int(self.group_size, "group_size")
        if self.codes.shape[self.axis] % self.group_size:
            raise ValueError(f"group_size: expected a divisor of the length {self.codes.shape[self.axis]} of axis "
                             f"{self.axis}, got {self.group_size}")
        stats = list(self.codes.shape)
        stats[self.axis] //= self.group_size
        for name in ("scale", "zero"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or list(value.shape) != stats:
                raise ValueError(f"{name}: expected a float tensor of shape {tuple(stats)} (one per group), "
                                 f"got {describe(value)}")

    @property
    def n_groups(self) -> int:
        return self.scale.numel()

    def stored_bits(self) -> int:
        """Bits of the packed form: every code at ``bits`` bits, scale and minimum at 16 bits each."""
        return quantized_bits(self.codes.numel(), self.bits, self.n_groups)

    def stored_bytes(self) -> int:
        """:meth:`stored_bits` in whole bytes (rounded up)."""
        return math.ceil(self.stored_bits() / 8)


def quantized_bits(n: int, bits: int, n_groups: int) -> int:
    """Bits that ``n`` entries quantized at ``bits`` bits in ``n_groups`` groups take packed:
    ``n * bits`` for the codes plus ``n_groups * 2 * 16`` for a float16 scale and minimum per group."""
    int_at_least(n, "n", 0)
    int_in_range(bits, "bits", 1, 8, expected="an int in [1, 8] (codes are stored as uint8)")
    int_in_range(n_groups, "n_groups", 0, n)
    return n * bits + n_groups * 2 * 8 * STAT_BYTES


def _check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise ValueError(f"{name}: expected a floating-point tensor with at least one dimension, got {describe(x)}")
    if not x.numel():
        raise ValueError(f"{name}: expected a non-empty tensor, got {describe(x)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return x


def _check_axis(x: torch.Tensor, axis, group_size) -> int:
    int_in_range(axis, "axis", -x.dim(), x.dim() - 1)
    axis = axis % x.dim()
    positive_int(group_size, "group_size")
    if x.shape[axis] % group_size:
        raise ValueError(f"group_size: expected a divisor of the length {x.shape[axis]} of axis {axis}, "
                         f"got {group_size}")
    return axis


def quantize(x: torch.Tensor, bits: int, axis: int, group_size: int, exclude: torch.Tensor | None = None) -> Quantized:
    """Asymmetric min-max round-to-nearest quantization of ``x`` in groups of ``group_size`` consecutive
    entries along ``axis`` (as KIVI quantizes): codes ``round((x - min) / s)``, ``s = (max - min) / (2^bits - 1)``.

    ``exclude`` (optional, bool, ``x``'s shape) marks entries left out of their group's min and max: GEAR
    (:mod:`arlib.serving.gear`) stores its outliers apart and quantizes the rest. An excluded entry's code is
    clamped into range and meaningless; a group with every entry excluded gets min 0 and step 0."""
    _check_tensor(x, "x")
    int_in_range(bits, "bits", 1, 8, expected="an int in [1, 8] (codes are stored as uint8)")
    axis = _check_axis(x, axis, group_size)
    if exclude is not None and (not isinstance(exclude, torch.Tensor) or exclude.dtype != torch.bool
                                or exclude.shape != x.shape):
        raise ValueError(f"exclude: expected a bool tensor of shape {tuple(x.shape)}, got {describe(exclude)}")
    g = _grouped(x, axis, group_size)  # (..., n_groups, group_size)
    if exclude is None:
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    else:
        e = _grouped(exclude, axis, group_size)
        lo = g.masked_fill(e, math.inf).amin(-1, keepdim=True)
        hi = g.masked_fill(e, -math.inf).amax(-1, keepdim=True)
        empty = e.all(-1, keepdim=True)
        lo, hi = lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
    levels = 2 ** bits - 1
    scale = (hi - lo) / levels  # (..., n_groups, 1)
    step = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: code 0 is exact
    codes = torch.round((g - lo) / step).clamp_(0, levels).to(torch.uint8)
    return Quantized(codes=_ungrouped(codes, axis, x.shape), scale=_stats(scale, axis), zero=_stats(lo, axis),
                     bits=bits, axis=axis, group_size=group_size)


def dequantize(q: Quantized) -> torch.Tensor:
    """The reconstruction ``codes * scale + zero`` of :func:`quantize`'s groups, in the scale's dtype."""
    if not isinstance(q, Quantized):
        raise ValueError(f"q: expected a Quantized (from quantize), got {type(q).__name__}")
    scale = q.scale.repeat_interleave(q.group_size, dim=q.axis)  # (x's shape)
    zero = q.zero.repeat_interleave(q.group_size, dim=q.axis)
    return q.codes.to(scale.dtype) * scale + zero


def _grouped(x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """x with ``axis`` moved last and split into (n_groups, group_size)."""
    x = x.movedim(axis, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def _ungrouped(g: torch.Tensor, axis: int, shape) -> torch.Tensor:
    return g.reshape(*g.shape[:-2], -1).movedim(-1, axis).reshape(shape)


def _stats(s: torch.Tensor, axis: int) -> torch.Tensor:
    """(..., n_groups, 1) -> the input's shape with ``axis`` of length n_groups."""
    return s.squeeze(-1).movedim(-1, axis).contiguous()


# --- the two groupings of a cache tensor ------------------------------------------------------------


def grouping_axis(grouping: str) -> int:
    """The axis of a (B, H, T, D) cache tensor along which ``grouping``'s groups run: channels (-1) for
    ``"token"``, tokens (-2) for ``"channel"``."""
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping: expected one of {GROUPINGS}, got {grouping!r}")
    return -1 if grouping == "token" else -2


def quantize_kv(x: torch.Tensor, bits: int, grouping: str, group_size: int) -> Quantized:
    """Quantize keys or values ``x`` (B, H, T, D) per token (groups of ``group_size`` channels of one token)
    or per channel (groups of ``group_size`` consecutive tokens of one channel), as KIVI defines them."""
    _check_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x: expected a (batch, heads, time, head_dim) tensor, got {describe(x)}")
    return quantize(x, bits, grouping_axis(grouping), group_size)


def fake_quantize(x: torch.Tensor, bits: int, grouping: str, group_size: int) -> torch.Tensor:
    """``dequantize(quantize_kv(x, ...))``: what attention reads back from a quantized cache."""
    return dequantize(quantize_kv(x, bits, grouping, group_size))


def relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    """Relative Frobenius error ``||x - approx||_F / ||x||_F`` (0 for x == approx == 0)."""
    _check_tensor(x, "x")
    if not isinstance(approx, torch.Tensor) or approx.shape != x.shape or approx.is_complex():
        raise ValueError(f"approx: expected a real tensor of shape {tuple(x.shape)}, got {describe(approx)}")
    if not torch.isfinite(approx).all():
        raise ValueError("approx: expected finite values, got NaN or inf")
    norm = torch.linalg.vector_norm(x.double())
    diff = torch.linalg.vector_norm(x.double() - approx.double())
    return 0.0 if norm == 0 and diff == 0 else float(diff / norm)


@torch.no_grad()
def capture_kv(model, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values (L, B, H_kv, T, D) that ``model`` (an :class:`arlib.text.gpt.GPT`) computes for
    token ids ``idx`` (B, T), read from a plain :class:`arlib.text.gpt.KVCache` after one forward."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected an arlib.text.gpt.GPT, got {type(model).__name__}")
    token_ids(idx, "idx", dim=2, vocab_size=model.config.vocab_size,
              expected="a (batch, time) torch.long tensor of token ids")
    int_in_range(idx.shape[1], "idx", 1, model.config.block_size,
                 expected=f"a length in [1, block_size={model.config.block_size}] (idx.shape[1])")
    cache = model.new_cache(idx.shape[0])
    model(idx, cache=cache)
    T = idx.shape[1]
    return cache.k[:, :, :, :T].clone(), cache.v[:, :, :, :T].clone()


# --- KIVI's cache -----------------------------------------------------------------------------------


class QuantizedCache(KVCache):
    """KIVI's KV cache (Liu et al. 2024, Algorithm 1): keys quantized per channel in groups of
    ``group_size`` tokens, values per token in groups of ``group_size`` channels, the ``residual`` most
    recent tokens in full precision. See the module docstring for the rules and what is counted.

    ``key_grouping`` / ``value_grouping`` (``"channel"`` or ``"token"``) choose each tensor's grouping; a
    ``"channel"`` grouping needs ``residual`` a positive multiple of ``group_size``, a ``"token"`` grouping a
    ``group_size`` dividing the head dimension. ``residual >= block_size`` keeps everything in full
    precision: the plain cache. Rolling back (:meth:`crop`) works inside the full-precision residual only."""

    def __init__(self, config: GPTConfig, batch_size: int, bits: int, key_grouping: str = "channel",
                 value_grouping: str = "token", group_size: int = 32, residual: int = 32, device=None,
                 dtype=torch.float32):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        device_dtype(device, dtype)
        super().__init__(config, batch_size, device=device, dtype=dtype)
        self.bits = int_in_range(bits, "bits", 1, 8, expected="an int in [1, 8] (codes are stored as uint8)")
        self.group_size = positive_int(group_size, "group_size")
        self.residual = int_at_least(residual, "residual", 0)
        self.head_dim = config.n_embd // config.n_head
        self.groupings = {"key": key_grouping, "value": value_grouping}
        for which, grouping in self.groupings.items():
            if grouping not in GROUPINGS:
                raise ValueError(f"{which}_grouping: expected one of {GROUPINGS}, got {grouping!r}")
            if grouping == "channel" and (residual < group_size or residual % group_size):
                raise ValueError(f"residual: expected a positive multiple of group_size={group_size} (per-channel "
                                 f"{which}s are quantized `residual` tokens at a time), got {residual}")
            if grouping == "token" and self.head_dim % group_size:
                raise ValueError(f"group_size: expected a divisor of the head dimension {self.head_dim} "
                                 f"(per-token {which} groups), got {group_size}")
        self.n_quantized = {"key": 0, "value": 0}  # leading positions held quantized, the same in every layer

    def _quantized_after(self, which: str, total: int) -> int:
        """How many leading positions are quantized once ``total`` have been seen (KIVI's flush rules)."""
        done = self.n_quantized[which]
        if self.groupings[which] == "channel":  # whole blocks of `residual` tokens leave the residual
            return done + (total - done) // self.residual * self.residual
        return max(done, total - self.residual)  # tokens older than the `residual` most recent leave

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None,
               dropout: float = 0.0) -> torch.Tensor:
        """Store the T new keys and values in full precision, attend over the stored (quantized, then
        full-precision) positions and the new ones, then quantize what leaves the residual."""
        _, B, H_kv, _, D = self.k.shape
        attend_args(layer, self.n_layers, q, k, v, B, H_kv, D, self.block_size - self.length)
        start, T = self.length, q.shape[2]
        end = start + T
        y = super().attend(layer, q, k, v, mask, dropout)  # store in full precision, attend: (B, H, T, D)
        for which, store in (("key", self.k), ("value", self.v)):
            lo, hi = self.n_quantized[which], self._quantized_after(which, end)
            if hi > lo:  # these positions leave the residual: quantize them in place
                store[layer, :, :, lo:hi] = fake_quantize(store[layer, :, :, lo:hi], self.bits,
                                                          self.groupings[which], self.group_size)
        return y

    def advance(self, T: int) -> None:
        self.length += T
        for which in self.n_quantized:
            self.n_quantized[which] = self._quantized_after(which, self.length)

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on; only full-precision (residual) positions can go.

        Positions quantized per token while the forgotten ones were there stay quantized: the state is then
        not the one a cache that never saw them would hold (with both groupings ``"channel"`` it is)."""
        held = max(self.n_quantized.values())
        if not held <= length <= self.length:
            raise ValueError(f"length: expected an int in [{held}, {self.length}] (positions before {held} are "
                             f"already quantized and cannot be rolled back), got {length!r}")
        self.length = length

    def stored_bits(self) -> int:
        """Bits of the packed cache: codes, float16 scales and minimums of the quantized positions, and
        the full-precision residual, for keys and values of every layer and row of the batch."""
        L, B, H, _, D = self.k.shape
        total = 0
        for n in self.n_quantized.values():
            per_head = n * D  # quantized entries of one (layer, row, head)
            n_groups = per_head // self.group_size  # either grouping: group_size entries per group
            total += quantized_bits(per_head, self.bits, n_groups)
            total += (self.length - n) * D * self.number_bytes(self.k.element_size()) * 8
        return L * B * H * total

    def stored_bytes(self) -> int:
        return math.ceil(self.stored_bits() / 8)
