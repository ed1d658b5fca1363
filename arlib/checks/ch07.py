"""Checks for chapter 7 (the KV cache under pressure: reading keys through a block table, the attention-sink
window mask, per-channel quantization of keys, and GEAR's low-rank correction of the quantization error)."""

from __future__ import annotations

import torch

from arlib.checks.core import Check

# --- 7.1 -------------------------------------------------------------------------------------------


def read_through_table(fn) -> None:
    """Exercise 7.1: ``fn(pool, table, length) -> keys``: pool (N, B, ...) of N physical blocks of B
    positions, table (n,) the physical block of each logical block, the first ``length`` positions in order."""
    with Check("7.1", "reading a request's keys through its block table") as c:
        hint = ("position p lives in slot p % B of physical block table[p // B]: index the pool with the whole table "
                "(pool[table] is (n, B, ...)), merge the first two dimensions and keep the first `length` rows")
        g = torch.Generator().manual_seed(71)
        cases = [((6, 4, 3), [4, 1, 3], 10, "6 blocks of 4 positions, 3 channels; a half-full last block"),
                 ((6, 4, 3), [4, 1, 3], 12, "the same request with its last block full"),
                 ((5, 8, 2), [2], 3, "one block, 3 positions of 8"),
                 ((10, 4, 2, 5), [9, 0, 7, 3], 13, "a pool with a head axis (N, B, H, D) = (10, 4, 2, 5)"),
                 ((7, 3, 4), [6, 5, 4, 3, 2, 1, 0], 19, "every block, in reverse physical order"),
                 ((4, 16, 8), [3, 0], 17, "blocks of 16, one position into the second block")]
        for shape, table, length, what in cases:
            pool = torch.randn(*shape, generator=g)
            index = torch.tensor(table)
            expected = torch.stack([pool[table[p // shape[1]], p % shape[1]] for p in range(length)])
            got = c.call(fn, pool.clone(), index.clone(), length)
            c.close(got, expected, f"the keys of positions 0..{length - 1} on {what}", hint, atol=0, rtol=0)


# --- 7.2 -------------------------------------------------------------------------------------------


def sink_window_mask(fn) -> None:
    """Exercise 7.2: ``fn(T, n_sink, window) -> mask`` (T, T) bool: query i sees key j when j <= i and
    (j < n_sink or j > i - window)."""
    with Check("7.2", "the attention-sink window mask") as c:
        hint = ("start from the causal mask (j <= i, torch.tril of ones); a key is kept if it is one of the first "
                "n_sink positions or one of the last `window` positions up to the query itself (i - j < window)")
        for T, n_sink, window, what in [(8, 2, 3, "T = 8, 2 sinks, a window of 3"),
                                        (10, 0, 4, "no sinks: a plain sliding window of 4"),
                                        (6, 1, 1, "1 sink, a window of 1 (the query itself)"),
                                        (7, 3, 20, "a window longer than the sequence: the causal mask"),
                                        (9, 12, 2, "more sinks than positions: the causal mask"),
                                        (12, 4, 5, "StreamingLLM's 4 sinks, a window of 5")]:
            i = torch.arange(T)[:, None]
            j = torch.arange(T)[None, :]
            expected = (j <= i) & ((j < n_sink) | (i - j < window))
            got = c.call(fn, T, n_sink, window)
            if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
                c.expect(False, f"the mask for {what} (its type)", "a torch.bool tensor", got, hint)
            c.expect(tuple(got.shape) == (T, T), f"the shape of the mask for {what}", (T, T), tuple(got.shape), hint)
            c.expect(torch.equal(got, expected), f"the mask for {what}", expected.int(), got.int(), hint)


# --- 7.3 -------------------------------------------------------------------------------------------


def quantize_per_channel(fn) -> None:
    """Exercise 7.3: ``fn(keys, bits) -> approx``: keys (T, D) quantized per channel (one group per column,
    min-max over its T tokens) at ``bits`` bits, returned dequantized."""
    with Check("7.3", "per-channel quantization of keys") as c:
        hint = ("per column (dim=0): lo = min, s = (max - min) / (2**bits - 1); codes = round((x - lo) / s) clamped to "
                "[0, 2**bits - 1]; return codes * s + lo. A constant column has s = 0: return it unchanged")
        g = torch.Generator().manual_seed(73)
        outlier = torch.randn(64, 8, generator=g, dtype=torch.float64)
        outlier[:, 3] *= 40  # one channel of large keys, as KIVI finds in real models
        constant = torch.randn(20, 5, generator=g, dtype=torch.float64)
        constant[:, 2] = 0.7
        cases = [(torch.randn(32, 16, generator=g, dtype=torch.float64), 8, "32 random keys of 16 channels, 8 bits"),
                 (torch.randn(32, 16, generator=g, dtype=torch.float64), 2, "the same shape at 2 bits"),
                 (outlier, 4, "one channel 40 times larger than the others, 4 bits"),
                 (constant, 3, "a constant channel (its range is 0), 3 bits"),
                 (torch.rand(50, 4, generator=g, dtype=torch.float64) + 5.0, 1, "positive keys, 1 bit")]
        for keys, bits, what in cases:
            lo, hi = keys.amin(0, keepdim=True), keys.amax(0, keepdim=True)
            s = (hi - lo) / (2 ** bits - 1)
            step = torch.where(s > 0, s, torch.ones_like(s))
            expected = torch.round((keys - lo) / step).clamp(0, 2 ** bits - 1) * s + lo
            got = c.call(fn, keys.clone(), bits)
            c.close(got, expected, f"the dequantized keys of {what}", hint, atol=1e-9, rtol=1e-9)
            if isinstance(got, torch.Tensor) and got.shape == keys.shape:
                error = (got - keys).abs().max(0).values
                c.expect(bool((error <= s[0] / 2 + 1e-9).all()), f"every entry within half a step (s / 2) on {what}",
                         "|x - approx| <= s / 2 in every channel", error, hint)


# --- 7.4 -------------------------------------------------------------------------------------------


def low_rank_residual(fn) -> None:
    """Exercise 7.4: ``fn(d, d_hat, rank) -> L``: the best rank-``rank`` approximation (Frobenius norm) of the
    quantization residual R = d - d_hat, both (T, D)."""
    with Check("7.4", "GEAR's low-rank correction of the quantization error") as c:
        hint = ("R = d - d_hat; U, S, Vh = torch.linalg.svd(R, full_matrices=False); keep the first `rank` singular "
                "triplets: (U[:, :r] * S[:r]) @ Vh[:r] (Eckart-Young: no rank-r matrix is closer to R)")
        g = torch.Generator().manual_seed(74)
        cases = []
        for T, D, r, what in [(64, 16, 2, "a 64 x 16 random residual, rank 2"),
                              (40, 32, 4, "a 40 x 32 random residual, rank 4"),
                              (12, 20, 1, "a wide 12 x 20 residual, rank 1")]:
            d = torch.randn(T, D, generator=g, dtype=torch.float64)
            d_hat = d + 0.1 * torch.randn(T, D, generator=g, dtype=torch.float64)
            cases.append((d, d_hat, r, what))
        planted = (torch.randn(48, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 16, generator=g,
                                                                                      dtype=torch.float64))
        d = torch.randn(48, 16, generator=g, dtype=torch.float64)
        cases.append((d, d - planted, 3, "a residual of rank exactly 3, rank 3 (recovered exactly)"))
        cases.append((d, d.clone(), 2, "no residual at all (d_hat = d)"))
        for d, d_hat, r, what in cases:
            residual = d - d_hat
            U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
            expected = (U[:, :r] * S[:r]) @ Vh[:r]
            got = c.call(fn, d.clone(), d_hat.clone(), r)
            if not isinstance(got, torch.Tensor) or got.shape != residual.shape:
                c.expect(False, f"L for {what} (its shape)", tuple(residual.shape), got, hint)
            optimum = torch.linalg.norm(residual - expected).item()
            error = torch.linalg.norm(residual - got.to(residual.dtype)).item()
            c.expect(error <= optimum * 1.01 + 1e-9 * (1 + torch.linalg.norm(residual).item()),
                     f"||R - L||_F for {what} (Eckart-Young's optimum, within 1 %)", optimum, error, hint)
            rank = int(torch.linalg.matrix_rank(got.to(torch.float64), atol=1e-8 * (1 + S[0].item())).item())
            c.expect(rank <= r, f"the rank of L for {what}", f"at most {r}", rank, hint)
