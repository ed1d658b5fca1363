"""Grading specs of chapter 7: the block table, the sink-window mask, per-channel quantization, GEAR's low rank."""

from __future__ import annotations

import torch

from tools.grading.core import Case, Spec, describe, same_tensor, t


def _table_cases(rng):
    cases = []
    for k in range(5):
        N, B = int(rng.integers(2, 12)), int(rng.integers(1, 9))
        trailing = tuple(int(x) for x in rng.integers(1, 5, int(rng.integers(1, 3))))
        n = int(rng.integers(1, N + 1))
        table = rng.permutation(N)[:n]
        length = n * B if k == 0 else int(rng.integers((n - 1) * B + 1, n * B + 1))
        pool = t(rng.standard_normal((N, B) + trailing), torch.float32)
        cases.append(Case((pool, t(table, torch.long), length), f"{N} blocks of {B}, a table of {n}, {length} "
                          "positions"))
    return cases


def _table(case):
    pool, table, length = case.args
    B = pool.shape[1]
    return torch.stack([pool[int(table[p // B]), p % B] for p in range(length)])


def _mask_cases(rng):
    cases = []
    for k in range(6):
        T = int(rng.integers(1, 20))
        n_sink = int(rng.integers(0, T + 4)) if k else 0
        window = int(rng.integers(1, T + 4))
        cases.append(Case((T, n_sink, window), f"T = {T}, {n_sink} sinks, window {window}"))
    return cases


def _mask(case):
    T, n_sink, window = case.args
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) & ((j < n_sink) | (i - j < window))


def _quant_cases(rng):
    cases = []
    for k in range(5):
        T, D = int(rng.integers(2, 60)), int(rng.integers(1, 12))
        keys = rng.standard_normal((T, D)) * rng.uniform(0.1, 40, D) + rng.uniform(-3, 3, D)
        if k == 1:
            keys[:, int(rng.integers(D))] = rng.uniform(-1, 1)  # a constant channel
        bits = int(rng.integers(1, 9))
        cases.append(Case((t(keys), bits), f"{T} keys of {D} channels, {bits} bits"))
    return cases


def _quant(case):
    keys, bits = case.args
    lo, hi = keys.amin(0, keepdim=True), keys.amax(0, keepdim=True)
    s = (hi - lo) / (2 ** bits - 1)
    step = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round((keys - lo) / step).clamp(0, 2 ** bits - 1) * s + lo


def _quant_compare(got, expected, case):
    from tools.grading.core import tensor_close

    return tensor_close(got, expected, 1e-9, 1e-9)


def _rank_cases(rng):
    cases = []
    for k in range(4):
        T, D = int(rng.integers(2, 60)), int(rng.integers(2, 40))
        r = int(rng.integers(1, min(T, D) + 1))
        d = t(rng.standard_normal((T, D)))
        if k == 0:
            d_hat = d.clone()
        elif k == 1:
            d_hat = d - t(rng.standard_normal((T, r))) @ t(rng.standard_normal((r, D)))
        else:
            d_hat = d + 0.1 * t(rng.standard_normal((T, D)))
        cases.append(Case((d, d_hat, r), f"a {T} x {D} residual, rank {r}" + (" (none)" if k == 0 else "")))
    return cases


def _rank(case):
    d, d_hat, r = case.args
    U, S, Vh = torch.linalg.svd(d - d_hat, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def _rank_compare(got, expected, case):
    d, d_hat, r = case.args
    residual = d - d_hat
    if not isinstance(got, torch.Tensor) or got.shape != residual.shape:
        return f"expected a tensor of shape {tuple(residual.shape)}, got {describe(got)}"
    g = got.double()
    if not bool(torch.isfinite(g).all()):
        return "non-finite entries"
    optimum = float(torch.linalg.norm(residual - expected))
    error = float(torch.linalg.norm(residual - g))
    scale = 1 + float(torch.linalg.norm(residual))
    if error > optimum * 1.01 + 1e-9 * scale:
        return f"||R - L|| = {error:.6g}, the optimum is {optimum:.6g}"
    S = torch.linalg.svdvals(residual)
    rank = int(torch.linalg.matrix_rank(g, atol=1e-8 * (1 + float(S[0]) if len(S) else 1)))
    return None if rank <= r else f"L has rank {rank}, at most {r} allowed"


SPECS = [
    Spec("7.1", ("read_through_table",), ("arlib.serving.paged.PagedKVCache._read",), _table_cases, _table,
         same_tensor),
    Spec("7.2", ("sink_window_mask",), ("arlib.serving.eviction.sink_keep",), _mask_cases, _mask, same_tensor),
    Spec("7.3", ("quantize_per_channel",), ("arlib.serving.quant.quantize", "arlib.serving.quant.fake_quantize"),
         _quant_cases, _quant, _quant_compare),
    Spec("7.4", ("low_rank_residual",), ("arlib.serving.gear.power_iteration", "arlib.serving.gear.gear_compress"),
         _rank_cases, _rank, _rank_compare),
]
