"""GEAR: quantization with its error reduced by sparse outliers and a low-rank correction (chapter 7).

Paper: Kang, Zhang, Kundu, Jeong, Liu, Krishna and Zhao, "GEAR: An Efficient KV Cache Compression Recipe for
Near-Lossless Generative Inference of LLM" (2024, arXiv 2403.05527). Reference code: opengear-project/GEAR
on GitHub at commit 01d0a32, ``GenerationBench/GenerationTest/GEARLM/Simulated/compress_function.py``
(``gears_channelQ``, ``gears_tokenQ``, ``fake_poweriteration_group``, ``compress_insert_function``, the code
behind the paper's experiments).

A matrix D of keys or values is stored as three parts (GEAR's decomposition ``D ~ D_hat + L + S``):

* **S**, sparse outliers: the largest and the smallest fractions ``s/2`` of the entries of each row, kept exactly
  (:func:`outlier_mask`). The rows follow the quantization's grouping, as in the reference
  (``gears_channelQ`` / ``gears_tokenQ``): for keys each channel over the chunk's tokens, for values each
  token over the channels of all heads. A row keeps ``floor(s/2 * row length)`` entries at each end (the
  reference's ``int(...)``), so a short row keeps none.
* **D_hat** = deq(quant(D - S)), the backbone: :func:`arlib.serving.quant.quantize`, asymmetric min-max
  round-to-nearest. The book takes the paper's "KCVT" backbone (keys per channel, values per token, as
  KIVI groups them): keys per channel with one group per channel over the whole compressed chunk, values
  per token in groups of ``group_size`` channels (default: the head dimension). The outlier slots are left
  out of their group's min and max and read back from S (the book's choice: the paper writes D - S, whose
  zeros can stretch a group's range, and the reference fills the slots with the row's mean).
* **L**, a rank-r approximation of the quantization residual R = D - D_hat - S, per head (the T x d_head
  matrix of one batch row and head, as the reference's ``fake_poweriteration_group``), by power
  iteration (the paper's SVDSolver_r, :func:`power_iteration`): R ~ A B^T with A (T, r), B (d_head, r).
  The book orthonormalizes at every step where the reference does so only at the last (the same
  subspaces in exact arithmetic, no overflow); L = A A^T R is then an orthogonal projection of R, so adding
  it never increases the error. ``tests/test_serving_quant.py`` checks it against the truncated SVD. The
  number of ``iterations`` is the reference's ``loop``; the default 3 is the book's choice.

**Streaming** (the paper's streaming buffer of n_b tokens, Algorithm 1), :class:`GEARCache`: the prompt's keys and
values are compressed as one chunk once the prefill has attended over them in full precision; new tokens
then wait in a full-precision buffer, and every ``buffer`` tokens (the paper's n_b) the buffer is compressed
as one chunk and appended. Attention reads the decompressed chunks and the buffer. The reference uses a
separate rank for the prefill chunk and for the buffer chunks; the book uses one ``rank`` for both, capped at
the chunk's ``min(T, d_head)``.

**What is counted** (:meth:`GEARCache.stored_bytes`, :func:`component_bytes`): codes at ``bits`` bits packed
and a float16 scale and minimum per group; each outlier as a float16 value and an int32 index; the low-rank
factors in float16; the buffer at the cache's element size. As with :class:`~arlib.serving.quant.QuantizedCache`
the book keeps the decompressed values in the float tensor attention reads (its simplification), and keeps
the outlier values, statistics and factors at the input's precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlib.serving._checks import attend_args, device_dtype
from arlib.serving.quant import Quantized, dequantize, grouping_axis, quantize, relative_error
from arlib.text.gpt import GPTConfig, KVCache
from arlib.validate import describe, int_at_least, int_in_range, number_in, positive_int

__all__ = ["OUTLIER_BYTES", "FACTOR_BYTES", "GEARParts", "outlier_mask", "power_iteration", "gear_compress",
           "gear_decompress", "component_bytes", "gear_errors", "GEARCache"]

OUTLIER_BYTES = 2 + 4  # a float16 value and an int32 index per outlier
FACTOR_BYTES = 2  # low-rank factors in float16


@dataclass
class GEARParts:
    """The three parts of a GEAR-compressed tensor x (B, H, T, D): the quantized backbone (outlier slots
    meaningless), the outliers (flat indices into x and their values), and the low-rank factors
    ``left`` (B, H, T, r) and ``right`` (B, H, D, r) with L = left @ right^T."""

    quantized: Quantized
    outlier_index: torch.Tensor  # (n_outliers,) int64, flat positions in x
    outlier_value: torch.Tensor  # (n_outliers,)
    left: torch.Tensor
    right: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.quantized, Quantized) or self.quantized.codes.dim() != 4:
            raise ValueError(f"quantized: expected a Quantized of a (B, H, T, D) tensor, got "
                             f"{type(self.quantized).__name__}")
        B, H, T, D = self.quantized.codes.shape
        n = B * H * T * D
        index, value = self.outlier_index, self.outlier_value
        if not isinstance(index, torch.Tensor) or index.dtype != torch.long or index.dim() != 1 \
                or (index.numel() and (index.min() < 0 or index.max() >= n)):
            raise ValueError(f"outlier_index: expected a 1-D torch.long tensor of flat positions in [0, {n}), "
                             f"got {describe(index)}")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape != index.shape:
            raise ValueError(f"outlier_value: expected a float tensor {tuple(index.shape)} (one per outlier), "
                             f"got {describe(value)}")
        for name, rows in (("left", T), ("right", D)):
            f = getattr(self, name)
            if not isinstance(f, torch.Tensor) or not f.is_floating_point() or f.dim() != 4 \
                    or tuple(f.shape[:3]) != (B, H, rows) or f.shape[3] != self.left.shape[-1]:
                raise ValueError(f"{name}: expected a float tensor ({B}, {H}, {rows}, r), got {describe(f)}")

    @property
    def shape(self) -> torch.Size:
        return self.quantized.codes.shape

    def backbone(self) -> torch.Tensor:
        """D_hat + S: the dequantized backbone with the outliers written back exactly."""
        x = dequantize(self.quantized).reshape(-1)
        x[self.outlier_index] = self.outlier_value
        return x.reshape(self.shape)

    def lowrank(self) -> torch.Tensor:
        """L = left @ right^T (B, H, T, D)."""
        return self.left @ self.right.mT


def _check_kv(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"{name}: expected a floating-point (batch, heads, time, head_dim) tensor, got {describe(x)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return x


def outlier_mask(x: torch.Tensor, fraction: float, grouping: str) -> torch.Tensor:
    """Bool mask (x's shape) of GEAR's outliers in x (B, H, T, D): in every row, the ``floor(fraction/2 * n)``
    largest and as many smallest of its n entries. Rows: ``"channel"``, one channel of one head over the
    T tokens (keys); ``"token"``, one token over the channels of all heads (values), as the reference."""
    _check_kv(x)
    number_in(fraction, "fraction", 0, 1, bounds="[)", expected="a number in [0, 1)")
    grouping_axis(grouping)  # checks the name
    B, H, T, D = x.shape
    rows = x.movedim(-2, -1) if grouping == "channel" else x.transpose(1, 2).reshape(B, T, H * D)
    k = int(fraction / 2 * rows.shape[-1])
    mask = torch.zeros_like(rows, dtype=torch.bool)
    if k:
        mask.scatter_(-1, rows.topk(k, dim=-1).indices, True)
        mask.scatter_(-1, rows.topk(k, dim=-1, largest=False).indices, True)
    if grouping == "channel":
        return mask.movedim(-1, -2)
    return mask.reshape(B, T, H, D).transpose(1, 2)


def power_iteration(r: torch.Tensor, rank: int, iterations: int = 3, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors of every matrix r (..., n, m) by power (subspace) iteration (GEAR's SVDSolver_r):
    from a random right basis, alternate ``left = orth(r @ right)`` and ``right = r^T @ left``. Returns
    ``left`` (..., n, rank) with orthonormal columns and ``right`` (..., m, rank), so that
    ``left @ right^T = left left^T r`` is r projected on the span of ``left``; it converges to the truncated
    SVD as the iterations grow (at the rate of the gap between the rank-th and the next singular value),
    and is exact after one iteration when r has rank <= ``rank``. ``rank`` must be <= min(n, m)."""
    if not isinstance(r, torch.Tensor) or not r.is_floating_point() or r.dim() < 2:
        raise ValueError(f"r: expected a floating-point tensor of matrices (..., n, m), got {describe(r)}")
    if not torch.isfinite(r).all():
        raise ValueError("r: expected finite values, got NaN or inf")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    int_in_range(rank, "rank", 0, min(r.shape[-2:]))
    positive_int(iterations, "iterations")
    work = r if r.dtype in (torch.float32, torch.float64) else r.float()  # no QR in half precision
    right = torch.randn(*work.shape[:-2], work.shape[-1], rank, generator=generator, device=work.device,
                        dtype=work.dtype)
    for _ in range(iterations):
        right = torch.linalg.qr(right).Q  # (..., m, rank): an orthonormal basis, so the scale stays bounded
        left = torch.linalg.qr(work @ right).Q  # (..., n, rank)
        right = work.mT @ left  # (..., m, rank)
    return left.to(r.dtype), right.to(r.dtype)


def gear_compress(x: torch.Tensor, bits: int, rank: int, outlier_fraction: float, grouping: str = "token",
                  group_size: int | None = None, iterations: int = 3, seed: int = 0) -> GEARParts:
    """Compress keys or values x (B, H, T, D) into GEAR's parts: S = the outliers (:func:`outlier_mask`),
    D_hat = deq(quant(x - S)) at ``bits`` bits with ``grouping`` (``"channel"``: groups of ``group_size``
    tokens, default all T; ``"token"``: groups of ``group_size`` channels, default all D), and a rank-``rank``
    approximation of R = x - D_hat - S per head by ``iterations`` of :func:`power_iteration` (random start
    from ``seed``). ``rank`` is capped at min(T, D); 0 turns the low-rank part off, as
    ``outlier_fraction=0`` turns the outliers off."""
    _check_kv(x)
    int_at_least(rank, "rank", 0)
    int_at_least(seed, "seed", 0)
    number_in(outlier_fraction, "outlier_fraction", 0, 1, bounds="[)", expected="a number in [0, 1)")
    axis = grouping_axis(grouping)
    group_size = x.shape[axis] if group_size is None else group_size
    mask = outlier_mask(x, outlier_fraction, grouping)
    q = quantize(x, bits, axis, group_size, exclude=mask if mask.any() else None)
    index = mask.reshape(-1).nonzero().squeeze(1)  # (n_outliers,)
    value = x.reshape(-1)[index]
    d_hat = dequantize(q).masked_fill(mask, 0.0)
    residual = x - d_hat - value.new_zeros(x.numel()).index_copy(0, index, value).reshape(x.shape)  # 0 at outliers
    generator = torch.Generator(device=x.device).manual_seed(seed)
    left, right = power_iteration(residual, min(rank, *x.shape[-2:]), iterations, generator)
    return GEARParts(quantized=q, outlier_index=index, outlier_value=value, left=left, right=right)


def gear_decompress(parts: GEARParts) -> torch.Tensor:
    """D_hat + S + L: what attention reads back from a GEAR-compressed tensor."""
    if not isinstance(parts, GEARParts):
        raise ValueError(f"parts: expected GEARParts (from gear_compress), got {type(parts).__name__}")
    return parts.backbone() + parts.lowrank()


def component_bytes(parts: GEARParts) -> dict:
    """Bytes of each part as a packed implementation stores it: ``"quant"`` (codes at ``bits`` bits, float16
    scale and minimum per group), ``"outliers"`` (float16 value + int32 index each), ``"lowrank"``
    (both factors in float16), and their ``"total"``."""
    if not isinstance(parts, GEARParts):
        raise ValueError(f"parts: expected GEARParts (from gear_compress), got {type(parts).__name__}")
    sizes = {"quant": parts.quantized.stored_bytes(), "outliers": parts.outlier_index.numel() * OUTLIER_BYTES,
             "lowrank": (parts.left.numel() + parts.right.numel()) * FACTOR_BYTES}
    sizes["total"] = sum(sizes.values())
    return sizes


def gear_errors(x: torch.Tensor, bits: int, rank: int, outlier_fraction: float, grouping: str = "token",
                group_size: int | None = None, iterations: int = 3, seed: int = 0) -> dict:
    """GEAR's ablation on one tensor x (B, H, T, D): the relative Frobenius error of quantization alone
    (``"quant"``), with the outliers (``"quant+outliers"``), with the low-rank correction
    (``"quant+lowrank"``, the paper's GEAR-L) and with all three (``"gear"``), and the ``"bytes"`` of each
    part (:func:`component_bytes` of the full GEAR, plus ``"fp16"``, x in float16). Arguments as
    :func:`gear_compress`."""
    full = gear_compress(x, bits, rank, outlier_fraction, grouping, group_size, iterations, seed)
    no_outliers = gear_compress(x, bits, rank, 0.0, grouping, group_size, iterations, seed)
    errors = {"quant": relative_error(x, no_outliers.backbone()),
              "quant+outliers": relative_error(x, full.backbone()),
              "quant+lowrank": relative_error(x, gear_decompress(no_outliers)),
              "gear": relative_error(x, gear_decompress(full))}
    return {**errors, "bytes": {**component_bytes(full), "fp16": x.numel() * 2}}


class GEARCache(KVCache):
    """A KV cache compressed with GEAR (Kang et al. 2024) and its streaming buffer: the prefill's keys and
    values are compressed as one chunk after it attended, later tokens wait in full precision and are
    compressed ``buffer`` at a time. Keys: outliers and quantization per channel (one group per channel over
    the chunk); values: outliers per token, quantization per token in groups of ``group_size`` channels
    (default the head dimension). ``rank`` (capped at the chunk's min(T, d_head)), ``outlier_fraction``,
    ``iterations`` and ``seed`` as :func:`gear_compress`.

    ``compress_prefill=False`` (not the paper's) lets the prompt enter the buffer like any token; with a
    ``buffer`` longer than the context nothing is ever compressed: the plain cache. Rolling back
    (:meth:`crop`) works inside the buffer only."""

    def __init__(self, config: GPTConfig, batch_size: int, bits: int = 4, rank: int = 4,
                 outlier_fraction: float = 0.02, buffer: int = 20, group_size: int | None = None,
                 iterations: int = 3, compress_prefill: bool = True, seed: int = 0, device=None,
                 dtype=torch.float32):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        device_dtype(device, dtype)
        super().__init__(config, batch_size, device=device, dtype=dtype)
        self.bits = int_in_range(bits, "bits", 1, 8, expected="an int in [1, 8] (codes are stored as uint8)")
        self.rank = int_at_least(rank, "rank", 0)
        self.outlier_fraction = number_in(outlier_fraction, "outlier_fraction", 0, 1, bounds="[)",
                                          expected="a number in [0, 1)")
        self.buffer = positive_int(buffer, "buffer")
        head_dim = config.n_embd // config.n_head
        self.group_size = head_dim if group_size is None else positive_int(group_size, "group_size")
        if head_dim % self.group_size:
            raise ValueError(f"group_size: expected a divisor of the head dimension {head_dim}, got {group_size}")
        self.iterations = positive_int(iterations, "iterations")
        if not isinstance(compress_prefill, bool):
            raise ValueError(f"compress_prefill: expected a bool, got {compress_prefill!r}")
        self.compress_prefill = compress_prefill
        self.seed = int_at_least(seed, "seed", 0)
        self.n_compressed = 0  # leading positions held compressed (every layer alike)
        self.compressed_bytes = 0  # bytes of every compressed chunk of every layer, as component_bytes counts

    def _chunks(self, end: int) -> list[tuple[int, int]]:
        """The chunks [lo, hi) compressed once ``end`` positions are seen (paper's Algorithm 1)."""
        lo = self.n_compressed
        if lo == 0 and self.length == 0 and self.compress_prefill:  # the prefill: one chunk
            return [(0, end)] if end else []
        chunks = []
        while end - lo >= self.buffer:  # a full buffer: compress it and start a new one
            chunks.append((lo, lo + self.buffer))
            lo += self.buffer
        return chunks

    def _compress(self, store: torch.Tensor, layer: int, lo: int, hi: int, grouping: str) -> int:
        """Replace positions [lo, hi) of ``store[layer]`` by their GEAR reconstruction; returns their bytes."""
        x = store[layer, :, :, lo:hi]  # (B, H, n, D)
        group_size = hi - lo if grouping == "channel" else self.group_size
        parts = gear_compress(x, self.bits, self.rank, self.outlier_fraction, grouping, group_size,
                              self.iterations, self.seed + lo)
        store[layer, :, :, lo:hi] = gear_decompress(parts)
        return component_bytes(parts)["total"]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None,
               dropout: float = 0.0) -> torch.Tensor:
        """Store the T new keys and values in the buffer, attend over the decompressed chunks and the
        buffer, then compress the prefill (first call) or every full buffer."""
        _, B, H_kv, _, D = self.k.shape
        attend_args(layer, self.n_layers, q, k, v, B, H_kv, D, self.block_size - self.length)
        start, T = self.length, q.shape[2]
        end = start + T
        y = super().attend(layer, q, k, v, mask, dropout)  # store in full precision, attend: (B, H, T, D)
        for lo, hi in self._chunks(end):
            self.compressed_bytes += self._compress(self.k, layer, lo, hi, "channel")
            self.compressed_bytes += self._compress(self.v, layer, lo, hi, "token")
        return y

    def advance(self, T: int) -> None:
        chunks = self._chunks(self.length + T)
        if chunks:
            self.n_compressed = chunks[-1][1]
        self.length += T

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on; only buffered (full-precision) positions can go."""
        if not self.n_compressed <= length <= self.length:
            raise ValueError(f"length: expected an int in [{self.n_compressed}, {self.length}] (positions before "
                             f"{self.n_compressed} are compressed and cannot be rolled back), got {length!r}")
        self.length = length

    def stored_bytes(self) -> int:
        """Bytes of every compressed chunk (:func:`component_bytes`, keys and values of every layer) plus the
        full-precision buffer."""
        L, B, H, _, D = self.k.shape
        buffered = self.length - self.n_compressed  # positions still in the full-precision buffer
        return self.compressed_bytes + 2 * L * B * H * buffered * D * self.number_bytes(self.k.element_size())

