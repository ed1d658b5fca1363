"""Checks for chapter 4 (visual autoregression: vector quantization, VAR's residual scales, speculative
Jacobi decoding, LANTERN's relaxed acceptance and MaskGIT's decoding plan).

The letters are the book's: p is the model's (target) distribution, q the one a draft was drawn from.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from arlib.checks.core import Check, as_token_list, is_index_tensor
from arlib.vision.jacobi import lantern_neighbors, proximity_set


def _got(got):
    return got if isinstance(got, torch.Tensor) else type(got).__name__


def _distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) squared Euclidean distances in float64, by brute force."""
    return (z.detach().double()[:, None, :] - codebook.detach().double()[None, :, :]).pow(2).sum(-1)


def _nearest_ok(dist: torch.Tensor, idx: torch.Tensor, tol: float) -> bool:
    """Is every chosen code the nearest one, up to rounding (near ties may go either way)?"""
    chosen = dist.gather(1, idx.reshape(-1, 1)).squeeze(1)
    best = dist.min(1).values
    return bool((chosen <= best + tol * (1 + best)).all())


# --- 4.1 -------------------------------------------------------------------------------------------


def straight_through_quantize(fn) -> None:
    """Exercise 4.1: ``fn(z, codebook) -> (z_q, indices)``: nearest codes, and z_q = z + (e - z).detach()."""
    with Check("4.1", "straight-through quantization") as c:
        hint = ("indices[n] = argmin over k of ||z[n] - codebook[k]||^2 (torch.cdist, or ||z||^2 - 2 z.e + ||e||^2 "
                "for all pairs at once), and z_q = z + (codebook[indices] - z).detach(): the value of the code, "
                "the gradient of z")
        g = torch.Generator().manual_seed(41)
        cases = []
        for N, D, K, dtype in [(12, 3, 8, torch.float32), (50, 8, 32, torch.float64), (30, 2, 5, torch.float32),
                               (1, 4, 6, torch.float64), (9, 1, 4, torch.float64), (7, 5, 1, torch.float32)]:
            norms = 0.3 + 2.7 * torch.rand(K, 1, generator=g, dtype=torch.float64)
            codebook = torch.randn(K, D, generator=g, dtype=torch.float64) * norms  # codes of different lengths
            z = 1.5 * torch.randn(N, D, generator=g, dtype=torch.float64)
            kind = "float32" if dtype == torch.float32 else "float64"
            cases.append((z.to(dtype), codebook.to(dtype), f"{N} random {kind} vectors of dimension {D}, {K} codes "
                          "of different lengths", True))
        t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
        cases.append((t([[1.2, 0.0], [2.9, 0.1], [-0.3, 0.6], [0.8, -0.1]]), t([[1.0, 0.0], [3.0, 0.0], [0.0, 0.5]]),
                      "codes (1, 0), (3, 0), (0, 0.5): the longest code has the largest dot product with (1.2, 0), "
                      "but (1, 0) is nearer", True))
        book = cases[1][1]
        cases.append((book[[2, 0, 2, 31]].clone(), book, "vectors that are codes themselves", True))
        cases.append((cases[0][0], cases[0][1], "a z that does not require grad", False))
        for z0, codebook, what, grad in cases:
            N, D = z0.shape
            K = codebook.shape[0]
            z = z0.clone().requires_grad_(grad)
            got = c.call(fn, z, codebook.clone())
            c.expect(isinstance(got, (tuple, list)) and len(got) == 2, f"a pair (z_q, indices) for {what}",
                     "(z_q, indices)", _got(got), "return z_q and indices as a tuple: return z_q, indices")
            z_q, idx = got
            c.expect(is_index_tensor(idx) and tuple(idx.shape) == (N,), f"indices of shape (N,) = {(N,)} for {what}",
                     f"an integer tensor of shape {(N,)}", _got(idx),
                     "one code id per vector, as a torch.long tensor: the argmin over the codes (dim=1), not a value")
            c.expect(bool(((idx >= 0) & (idx < K)).all()), f"code ids in [0, {K}) for {what}", f"ids in [0, {K})", idx,
                     "indices index the rows of the codebook")
            dist = _distances(z0, codebook)
            tol = 1e-4 if z0.dtype == torch.float32 else 1e-9
            idx = idx.cpu().long()
            expected = dist.argmin(1)
            specific = None
            if torch.equal(idx, dist.argmax(1)) and not torch.equal(expected, dist.argmax(1)):
                specific = "these are the farthest codes: take the argmin of the distance, not the argmax"
            elif torch.equal(idx, (z0.double() @ codebook.double().T).argmax(1)):
                specific = ("these are the codes with the largest dot product z . e; that is the nearest code only "
                            "when all codes have the same length: ||z - e||^2 = ||z||^2 - 2 z . e + ||e||^2 needs the "
                            "||e||^2 term too")
            c.expect(_nearest_ok(dist, idx, tol), f"the nearest code (Euclidean distance) of every vector for {what}",
                     expected, idx, specific or hint)
            c.expect(isinstance(z_q, torch.Tensor) and tuple(z_q.shape) == (N, D), f"z_q of the shape of z for {what}",
                     f"tensor of shape {(N, D)}", _got(z_q), "z_q holds one code vector per row of z: (N, D)")
            codes = codebook.double()[idx]
            value = z_q.detach().double().cpu()
            if torch.allclose(value, z0.double(), atol=1e-6) and not torch.allclose(codes, z0.double(), atol=1e-3):
                specific = ("z_q has the value of z: e + (z - e).detach() is the straight-through estimator backwards "
                            "(its value is z, and its gradient goes to the codebook); write z + (e - z).detach()")
            atol = 1e-5 if z0.dtype == torch.float32 else 1e-9
            c.close(value, codes, f"z_q = codebook[indices] in value for {what}", specific or hint, atol=atol,
                    rtol=1e-5)
            if not grad:
                continue
            c.expect(z_q.requires_grad, f"z_q depends on z for the gradient, for {what}", "z_q.requires_grad == True",
                     f"z_q.requires_grad == {z_q.requires_grad}",
                     "codebook[indices] does not depend on z (argmin has no gradient), so an encoder in front of the "
                     "quantizer would never learn: pass the gradient straight through, z + (codebook[indices] - z)"
                     ".detach()")
            upstream = torch.randn(N, D, generator=g, dtype=torch.float64).to(z_q.dtype)
            try:
                (grad_z,) = torch.autograd.grad(z_q, z, upstream, allow_unused=True)
            except RuntimeError as exc:
                c.expect(False, f"backpropagating a gradient through z_q for {what}", "a gradient on z",
                         f"RuntimeError: {exc}", hint)
            c.expect(grad_z is not None, f"a gradient on z after backpropagating through z_q for {what}",
                     "a gradient on z", None, "z_q must be computed from z: z + (codebook[indices] - z).detach()")
            specific = None
            if not bool(grad_z.abs().max() > 0):
                specific = ("the gradient on z is zero: z + (e - z) without .detach() is e, and its gradient "
                            "1 - 1 = 0; detach the difference e - z")
            c.close(grad_z.detach(), upstream.detach(), f"d loss / d z = d loss / d z_q (the straight-through "
                    f"estimator: the quantizer acts as the identity on the way back) for {what}", specific or hint,
                    atol=1e-6, rtol=1e-5)


# --- 4.2 -------------------------------------------------------------------------------------------


def _residual_quantize(f, codebook, scales, down="area", up="bicubic", subtract=True, accumulate=True):
    """VAR's residual quantization without the phi convolutions: (token maps, f_hat), and some mistakes."""
    B, D, H, _ = f.shape
    residual, f_hat, maps = f, torch.zeros_like(f), []
    for s in scales:
        r = residual if s == H else F.interpolate(residual, size=(s, s), mode=down)
        flat = r.permute(0, 2, 3, 1).reshape(-1, D)
        idx = _distances(flat, codebook).argmin(1).view(B, s, s)
        codes = codebook.to(f.dtype)[idx].permute(0, 3, 1, 2)  # (B, D, s, s)
        back = codes if s == H else F.interpolate(codes, size=(H, H), mode=up)
        f_hat = f_hat + back if accumulate else back
        if subtract:
            residual = residual - back
        maps.append(idx)
    return maps, f_hat


def _smooth_features(B: int, D: int, H: int, g: torch.Generator) -> torch.Tensor:
    """Feature maps that vary on several scales, like an encoder's: coarse blobs plus finer detail."""
    f = torch.zeros(B, D, H, H, dtype=torch.float64)
    for s, weight in ((1, 1.0), (2, 0.8), (3, 0.5), (H, 0.2)):
        low = torch.randn(B, D, s, s, generator=g, dtype=torch.float64)
        f += weight * (low if s == H else F.interpolate(low, size=(H, H), mode="bicubic"))
    return f


def residual_quantize(fn) -> None:
    """Exercise 4.2: ``fn(f, codebook, scales) -> (maps, f_hat)``, VAR's multi-scale residual quantization."""
    with Check("4.2", "multi-scale residual quantization") as c:
        hint = ("start from residual = f and f_hat = 0; for each scale s: area-downsample the residual to s x s, "
                "take the nearest code of each of its s*s vectors (the token map), look the codes up as "
                "(B, D, s, s), bicubic-upsample them to H x H, add them to f_hat and subtract them from the residual "
                "(no interpolation at s = H)")
        g = torch.Generator().manual_seed(42)
        cases = []
        for B, D, H, K, scales, dtype, typical in [(2, 3, 7, 32, (1, 2, 3, 5, 7), torch.float32, True),
                                                   (3, 4, 7, 64, (1, 2, 3, 5, 7), torch.float64, True),
                                                   (1, 2, 4, 16, (1, 2, 4), torch.float64, True),
                                                   (2, 3, 6, 24, (2, 3, 6), torch.float32, False),
                                                   (2, 1, 5, 8, (1, 5), torch.float64, False),
                                                   (2, 3, 5, 12, (5,), torch.float64, False)]:
            f = _smooth_features(B, D, H, g)
            codebook = torch.randn(K, D, generator=g, dtype=torch.float64)
            kind = "float32" if dtype == torch.float32 else "float64"
            what = f"{kind} features (B, D, H, H) = {(B, D, H, H)}, {K} codes, scales {scales}"
            if scales == (H,):
                what += " (a single scale: plain nearest-code quantization)"
            cases.append((f.to(dtype), codebook.to(dtype), scales, what, typical))
        for f, codebook, scales, what, typical in cases:
            B, D, H, _ = f.shape
            K = codebook.shape[0]
            got = c.call(fn, f.clone(), codebook.clone(), scales)
            c.expect(isinstance(got, (tuple, list)) and len(got) == 2, f"a pair (maps, f_hat) for {what}",
                     "(list of token maps, f_hat)", _got(got), "return the list of token maps and f_hat as a tuple")
            maps, f_hat = got
            count = f"a {type(maps).__name__} of {len(maps)}" if isinstance(maps, (list, tuple)) else _got(maps)
            c.expect(isinstance(maps, (list, tuple)) and len(maps) == len(scales),
                     f"one token map per scale for {what}", f"a list of {len(scales)} tensors", count,
                     "append the (B, s, s) token map of every scale, coarse to fine")
            for s, m in zip(scales, maps):
                c.expect(is_index_tensor(m) and tuple(m.shape) == (B, s, s), f"the token map of scale {s} for {what}",
                         f"an integer tensor of shape {(B, s, s)}", _got(m),
                         "the code ids of the s x s downsampled residual, viewed as (B, s, s)")
                c.expect(bool(((m >= 0) & (m < K)).all()), f"code ids in [0, {K}) at scale {s} for {what}",
                         f"ids in [0, {K})", m, "token maps hold row indices of the codebook")
            maps = [m.cpu().long() for m in maps]
            variants = [
                (dict(subtract=False), "every scale quantizes what the coarser ones left over: subtract each "
                 "upsampled code map from the residual before the next scale"),
                (dict(up="nearest"), "upsample the code maps with mode='bicubic' (nearest makes blocky maps, and a "
                 "different residual)"),
                (dict(up="bilinear"), "upsample the code maps with mode='bicubic', not bilinear"),
                (dict(down="bilinear"), "downsample the residual with mode='area' (each cell's mean); bilinear "
                 "interpolation samples only the pixels near each cell's centre"),
                (dict(down="nearest"), "downsample the residual with mode='area' (each cell's mean), not nearest"),
                (dict(accumulate=False), "f_hat is the sum of the upsampled code maps of all scales, not the last one"),
            ]
            specific = None
            fd, cd = f.double(), codebook.double()
            ref_maps, ref_hat = _residual_quantize(fd, cd, scales)
            hat = f_hat.detach().double().cpu() if isinstance(f_hat, torch.Tensor) else None
            for change, text in variants:
                v_maps, v_hat = _residual_quantize(fd, cd, scales, **change)
                if not all(torch.equal(a, b) for a, b in zip(v_maps, maps)):
                    continue
                if hat is not None and (hat.shape != v_hat.shape or not torch.allclose(hat, v_hat, atol=1e-4)):
                    continue
                if not (all(torch.equal(a, b) for a, b in zip(ref_maps, v_maps)) and torch.allclose(ref_hat, v_hat)):
                    specific = text
                    break
            # Replay the learner's token maps: each must be the nearest codes of the residual its own coarser maps
            # leave (so near ties cannot send the comparison down another path), and f_hat must be their sum.
            tol = 1e-4 if f.dtype == torch.float32 else 1e-9
            residual, replay, first = fd, torch.zeros_like(fd), None
            for k, (s, m) in enumerate(zip(scales, maps)):
                r = residual if s == H else F.interpolate(residual, size=(s, s), mode="area")
                dist = _distances(r.permute(0, 2, 3, 1).reshape(-1, D), cd)
                c.expect(_nearest_ok(dist, m.reshape(-1), tol), f"the token map of scale {s} (number {k + 1} of "
                         f"{len(scales)}) holds the nearest code of every vector of the residual, area-downsampled to "
                         f"{s} x {s}, for {what}", dist.argmin(1).view(B, s, s), m, specific or hint)
                codes = cd[m].permute(0, 3, 1, 2)
                back = codes if s == H else F.interpolate(codes, size=(H, H), mode="bicubic")
                replay, residual = replay + back, residual - back
                first = back if first is None else first
            c.expect(isinstance(f_hat, torch.Tensor) and tuple(f_hat.shape) == (B, D, H, H),
                     f"f_hat of the shape of f for {what}", f"tensor of shape {(B, D, H, H)}", _got(f_hat),
                     "f_hat is the sum over scales of the upsampled code maps, (B, D, H, H) like f")
            c.close(f_hat.detach().double().cpu(), replay, f"f_hat = the sum over scales of the bicubic-upsampled code "
                    f"maps of your token maps, for {what}", specific or hint, atol=1e-4 if tol > 1e-6 else 1e-8,
                    rtol=1e-4)
            if typical:
                after_first = (fd - first).norm().item()
                after_all = (fd - f_hat.detach().double().cpu()).norm().item()
                c.expect(after_all < after_first, f"the finer scales explain more of f: ||f - f_hat|| after all scales "
                         f"is below ||f - f_hat|| after the first, {after_first:.4f}, for {what}",
                         f"< {after_first:.4f}", after_all, specific or hint)


# --- 4.3 -------------------------------------------------------------------------------------------


def _inverse_cdf(r: torch.Tensor, u: float) -> int:
    """The smallest j with cumsum(r)[j] > u * sum(r)."""
    cdf = torch.cumsum(r, 0)
    return min(int((cdf <= u * cdf[-1]).sum()), len(r) - 1)


def _sjd(p, q, drafts, u, rule="uniform", residual="p - q", stop=True, draw_with=1):
    """The decided tokens of one verification pass (no bonus token), and some mistakes."""
    out = []
    for i in range(len(drafts)):
        x = int(drafts[i])
        px, qx = float(p[i, x]), float(q[i, x])
        ux = float(u[i, 0]) * qx
        if {"uniform": ux < px, "<=": ux <= px, "p >= q": px >= qx}[rule]:
            out.append(x)
            continue
        r = {"p - q": (p[i] - q[i]).clamp_min(0), "q - p": (q[i] - p[i]).clamp_min(0), "p": p[i]}[residual]
        out.append(_inverse_cdf(r if r.sum() > 0 else p[i], float(u[i, draw_with])))
        if stop:
            break
    return out


def _window(rng: np.random.Generator, L: int, V: int, alpha: float, mix: float):
    """p, q (L, V) float64, drafts from q, uniforms: q is a mix of p and noise, so drafts are often accepted."""
    p = rng.dirichlet(np.full(V, alpha), size=L)
    q = mix * p + (1 - mix) * rng.dirichlet(np.full(V, alpha), size=L)
    drafts = np.array([rng.choice(V, p=row / row.sum()) for row in q])
    u = rng.random((L, 2))
    return torch.from_numpy(p), torch.from_numpy(q), torch.from_numpy(drafts).long(), torch.from_numpy(u)


def _chi2_sf_3(x: float) -> float:
    """P(X > x) for X chi-square with 3 degrees of freedom (closed form; no scipy import in a check)."""
    return math.erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi) * math.exp(-x / 2)


def sjd_verify(fn) -> None:
    """Exercise 4.3: ``fn(p, q, drafts, u) -> tokens``: accept drafts while u q < p, then draw from the residual."""
    with Check("4.3", "speculative Jacobi verification") as c:
        hint = ("for i = 0, 1, ..: x = drafts[i]; if u[i, 0] * q[i, x] < p[i, x], keep x and go on; otherwise "
                "append j = the smallest index with cumsum(r)[j] > u[i, 1] * sum(r), r = max(0, p[i] - q[i]) "
                "(p[i] if r is all zero), and stop")
        rng = np.random.default_rng(43)
        cases = []
        for k in range(36):
            L, V = 1 + k % 8, (2, 3, 5, 8, 12)[k % 5]
            alpha, mix = (0.3, 1.0, 3.0)[k % 3], (0.0, 0.5, 0.8, 0.95)[k % 4]
            p, q, drafts, u = _window(rng, L, V, alpha, mix)
            if k % 2:
                u[:, 0] = u[:, 0] ** 3  # smaller uniforms: longer runs of acceptances
            cases.append((p, q, drafts, u, f"a random window of {L} positions over {V} tokens"))
        p, q, drafts, u = _window(rng, 5, 6, 1.0, 0.0)
        cases.append((p, p.clone(), drafts, u, "q = p (every draft passes)"))
        p, _, drafts, u = _window(rng, 4, 5, 1.0, 0.0)
        cases.append((p, F.one_hot(drafts, 5).double(), drafts, u, "one-hot q (greedy drafts): accept with "
                      "probability p(x)"))
        p, q, drafts, u = _window(rng, 3, 4, 1.0, 0.5)
        p[1, drafts[1]] = 0.0
        p[1] /= p[1].sum()
        u[:2, 0] = 0.0
        cases.append((p, q, drafts, u, "p = 0 where the second draft is, with u = 0 (the first draft passes, the "
                      "second must be rejected)"))
        t = lambda *rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
        cases.append((t([0.0, 0.5, 0.5]), t([0.6, 0.2, 0.2]), torch.tensor([0]), t([0.0, 0.3]),
                      "p = 0 where the only draft is, with u = 0"))
        p, q, drafts, u = _window(rng, 1, 6, 1.0, 0.0)
        q[0], p[0] = torch.tensor([0.05, 0.9, 0.05, 0, 0, 0]), torch.tensor([0.1, 0.1, 0.1, 0.2, 0.2, 0.3])
        drafts[0], u[0] = 1, torch.tensor([0.5, 0.5])
        cases.append((p, q, drafts, u, "a single position, rejected"))
        p, q, drafts, u = _window(rng, 6, 10, 0.5, 0.9)
        cases.append((p.float(), q.float(), drafts, u.float(), "float32 tensors"))
        for p, q, drafts, u, what in cases:
            got = c.call(fn, p.clone(), q.clone(), drafts.clone(), u.clone())
            tokens = as_token_list(got)
            c.expect(tokens is not None, f"a list of token ids for {what}", "a list of ints or a 1-D torch.long tensor",
                     _got(got), "return the decided tokens: the accepted drafts, then the replacement if a draft was "
                     "rejected")
            pd, qd, ud = p.double(), q.double(), u.double()
            expected = _sjd(pd, qd, drafts, ud)
            mistakes = [
                (dict(rule="p >= q"), "the test is random: accept x with probability min(1, p(x) / q(x)), i.e. when "
                 "u[i, 0] * q[i, x] < p[i, x]; accepting exactly when p(x) >= q(x) changes the law of the output"),
                (dict(rule="<="), "the test is strict, u q < p: with u = 0 a draft the model gives probability 0 "
                 "must still be rejected"),
                (dict(residual="q - p"), "after a rejection, draw from what the model has in excess of the draft, "
                 "max(0, p - q), not max(0, q - p)"),
                (dict(residual="p"), "drawing the replacement from p counts the mass min(p, q) twice (the accepted "
                 "drafts already supply it): draw from norm(max(0, p - q))"),
                (dict(stop=False), "stop at the first rejection: the drafts after it were conditioned on a token "
                 "that is now replaced"),
                (dict(draw_with=0), "draw the replacement with the second uniform u[i, 1]; u[i, 0] was used by the "
                 "test, and reusing it correlates the two"),
            ]
            specific = next((h for change, h in mistakes if tokens == _sjd(pd, qd, drafts, ud, **change)
                             and _sjd(pd, qd, drafts, ud, **change) != expected), None)
            c.expect(tokens == expected, f"the decided tokens for {what}: drafts {drafts.tolist()}, "
                     f"p(draft) {[round(float(pd[i, x]), 4) for i, x in enumerate(drafts.tolist())]}, "
                     f"q(draft) {[round(float(qd[i, x]), 4) for i, x in enumerate(drafts.tolist())]}, "
                     f"u[:, 0] {[round(float(v), 4) for v in ud[:, 0]]}", expected, tokens, specific or hint)
        # The law of the first decided token: drafts drawn from q with fresh uniforms must give exactly p[0].
        p0 = torch.tensor([0.35, 0.05, 0.3, 0.0, 0.3], dtype=torch.float64)
        q0 = torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05], dtype=torch.float64)
        p1 = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2], dtype=torch.float64)
        n, g = 2000, torch.Generator().manual_seed(44)
        first = torch.multinomial(q0, n, replacement=True, generator=g)
        second = torch.multinomial(p1, n, replacement=True, generator=g)
        uniforms = torch.rand(n, 2, 2, generator=g, dtype=torch.float64)
        p, q = torch.stack([p0, p1]), torch.stack([q0, p1])
        counts = torch.zeros(5)
        for j in range(n):
            tokens = as_token_list(c.call(fn, p.clone(), q.clone(), torch.stack([first[j], second[j]]), uniforms[j]))
            if tokens is None or not tokens or not 0 <= tokens[0] < 5:
                c.expect(False, "a list of decided tokens starting with a token id in [0, 5)", "ids in [0, 5)",
                         tokens, hint)
            counts[tokens[0]] += 1
        freq = counts.double() / n
        stat = float(((counts.double() - n * p0) ** 2 / (n * p0).clamp_min(1e-300))[p0 > 0].sum())
        pvalue = _chi2_sf_3(stat)  # p0 has 4 possible tokens: 3 degrees of freedom
        c.expect(bool(counts[p0 == 0].sum() == 0) and pvalue > 1e-4, f"the first decided token has the law p[0] = "
                 f"{p0.tolist()} over {n} windows with drafts drawn from q[0] = {q0.tolist()} and fresh uniforms "
                 f"(chi-square p-value {pvalue:.2g}, at least 1e-4 wanted)", p0, freq, hint)


# --- 4.4 -------------------------------------------------------------------------------------------


def _prefix(p, x, row, delta, own=False, strict=False, each=False, keep_x=True):
    """The proximity set as code ids, and some mistakes."""
    mass = [0.0 if (int(v) == x and not own) else float(p[v]) for v in row]
    if each:
        chosen = [int(v) for v, m in zip(row, mass) if m <= delta]
    else:
        chosen, total = [], 0.0
        for v, m in zip(row, mass):
            total += m
            if (total < delta) if strict else (total <= delta + 1e-12):
                chosen.append(int(v))
            else:
                break
    return chosen if keep_x else [v for v in chosen if v != x]


def _table(V: int, k: int, x: int, row: list[int]) -> torch.Tensor:
    """A (V, k) neighbour table (each code first in its own row) whose row x is ``row``."""
    table = torch.stack([torch.roll(torch.arange(V), -v)[:k] for v in range(V)])
    table[x] = torch.tensor(row)
    return table


def lantern_proximity(fn) -> None:
    """Exercise 4.4: ``fn(p, x, neighbors, delta) -> ids``, LANTERN's proximity set A_(k, delta)(x)."""
    with Check("4.4", "LANTERN's proximity set") as c:
        hint = ("walk along neighbors[x] (x first), adding up the probabilities of the codes other than x, and keep "
                "the longest prefix whose added mass is at most delta (<=): one cumulative sum, then "
                "row[:number of partial sums <= delta]")
        # Hand-made rows first: powers of 2 make every partial sum exact in float32 and float64, and each typical
        # mistake fails first on a row where no other mistake gives the same answer.
        V = 8
        p = torch.tensor([0.25, 0.125, 0.0625, 0.03125, 0.25, 0.0, 0.0, 0.28125], dtype=torch.float64)
        hand = [
            (5, [5, 1, 2, 0, 4], 0.1875, "delta equal to a partial sum, 0.125 + 0.0625 (<=, not <)"),
            (3, [3, 1, 2, 0, 4], 0.2, "x with a probability of its own, 0.03125 (not part of the budget)"),
            (3, [3, 2, 4, 1, 5, 6], 0.1, "a light neighbour after a heavy one (the set is a prefix of the row)"),
            (3, [3, 5, 6, 1, 0], 0.0, "delta = 0: only x and the zero-probability neighbours in front of the first "
             "positive one"),
            (3, [3, 1, 5, 0, 2], 0.0, "delta = 0 with a positive first neighbour: x alone"),
            (3, [3, 1, 2, 0, 4], 1.0, "delta = 1: the whole row"),
            (0, [0, 2, 3, 1, 5], 0.2, "x with a large probability of its own, 0.25"),
            (3, [3, 2, 4, 5, 6, 0], 0.07, "zero-probability neighbours after the budget is spent"),
            (4, [4], 0.5, "k = 1: the row holds x alone"),
        ]
        cases = [(p, x, _table(V, len(row), x, row), delta, what) for x, row, delta, what in hand]
        x, row = 3, [3, 1, 2, 0, 4]
        cases.append((p.float(), x, _table(V, 5, x, row), 0.1875, "float32 probabilities, delta equal to a partial "
                      "sum"))
        rng = np.random.default_rng(45)
        for V, D, k, alpha in [(16, 3, 4, 1.0), (16, 3, 8, 0.5), (16, 2, 16, 1.0), (32, 4, 10, 0.3), (32, 4, 32, 2.0),
                               (8, 2, 5, 1.0), (64, 8, 12, 0.2), (12, 3, 6, 5.0)]:
            codebook = torch.from_numpy(rng.standard_normal((V, D)))
            neighbors = lantern_neighbors(codebook, k)
            p = torch.from_numpy(rng.dirichlet(np.full(V, alpha)))
            for x in rng.choice(V, size=3, replace=False).tolist():
                extra = torch.cumsum(torch.where(neighbors[x] == x, 0.0, p[neighbors[x]]), 0)
                for delta in (0.02, 0.1, 0.3):
                    if (extra - delta).abs().min() > 1e-6:  # no partial sum on the boundary, up to rounding
                        cases.append((p, x, neighbors, delta, f"random p over {V} codes, {k} neighbours, x = {x}, "
                                      f"delta = {delta}"))
        for p, x, neighbors, delta, what in cases:
            got = c.call(fn, p.clone(), x, neighbors.clone(), delta)
            ids = as_token_list(got)
            c.expect(ids is not None, f"a 1-D tensor of code ids for {what}", "a 1-D torch.long tensor", _got(got),
                     "return a prefix of neighbors[x], e.g. neighbors[x][:m]")
            row = neighbors[x].tolist()
            pd = p.double()
            expected = proximity_set(pd, x, neighbors, delta).tolist()
            mistakes = [
                (dict(own=True), "x's own probability is not part of the budget: delta bounds the mass moved onto "
                 "x from its neighbours, sum of p(x') over x' != x"),
                (dict(strict=True), "the budget is inclusive: keep a neighbour when the mass so far is <= delta, "
                 "not < delta"),
                (dict(each=True), "the set is a prefix of neighbors[x]: the budget bounds the total mass of the "
                 "neighbours kept, so stop at the first one that would exceed it, even if a later one is lighter"),
                (dict(keep_x=False), "x itself belongs to its proximity set, first (neighbors[x][0] is x)"),
            ]
            matches = [h for change, h in mistakes if ids == _prefix(pd, x, row, delta, **change)
                       and _prefix(pd, x, row, delta, **change) != expected]
            specific = " Or: ".join(matches) or None  # an empty set can come from several mistakes
            ids = ids or []
            c.expect(ids[:1] == [x], f"x = {x} first in its proximity set for {what}", x, ids[0] if ids else ids,
                     specific or "x is always in the set (its own mass does not count) and neighbors[x] starts with "
                     "it")
            c.expect(ids == row[:len(ids)], f"a prefix of neighbors[x] = {row} for {what}", expected, ids,
                     specific or "the set is a nearest-first prefix of neighbors[x]")
            used = float(sum(pd[v] for v in ids if v != x))
            c.expect(used <= delta + 1e-9, f"the mass of the neighbours other than x, {used:.6g}, within delta = "
                     f"{delta} for {what}", f"<= {delta}", used, specific or hint)
            if len(ids) < len(row):
                following = used + float(pd[row[len(ids)]])
                c.expect(following > delta, f"the longest such prefix for {what}: the set may stop only where the "
                         f"next neighbour of the row would bring the mass over delta = {delta}, but with "
                         f"{row[len(ids)]} it is {following:.6g}", expected, ids, specific or hint)
            c.expect(ids == expected, f"the proximity set (arlib.vision.jacobi.proximity_set) for {what}", expected,
                     ids,
                     specific or hint)


# --- 4.5 -------------------------------------------------------------------------------------------


def _plan(schedule, steps: int, n: int, rounding=math.floor, shift: int = 0, clamp: bool = True,
          remaining: bool = False) -> list[int]:
    """The tokens MaskGIT decides per step, written out; the keywords make the typical mistakes."""
    masked, out = n, []
    for t in range(1, steps):
        left = rounding(schedule((t - shift) / steps) * n)
        if clamp:
            left = max(1, min(left, masked - 1))
        out.append(left if remaining else masked - left)
        masked = left
    return out + [0 if remaining else masked]


def maskgit_plan(fn) -> None:
    """Exercise 4.5: ``fn(steps, n_tokens, schedule) -> list of ints``, the tokens MaskGIT decides at each step."""
    with Check("4.5", "MaskGIT's decoding plan") as c:
        hint = ("keep the count still masked, starting at n_tokens; after step t = 1 .. steps - 1 it becomes "
                "floor(schedule(t / steps) * n_tokens), clamped to at least 1 and at most one fewer than before; the "
                "step decides the difference, and the last step decides whatever is left")
        cosine = lambda r: math.cos(math.pi / 2 * r)  # noqa: E731
        schedules = {"cosine": cosine, "linear": lambda r: 1 - r, "square": lambda r: 1 - r ** 2,
                     "square root": lambda r: 1 - r ** 0.5, "cubic": lambda r: 1 - r ** 3}
        cases = [(8, 49, "cosine"), (4, 49, "linear"), (10, 49, "square"), (8, 49, "square root"), (12, 256, "cubic"),
                 (1, 49, "cosine"), (2, 49, "linear"), (60, 49, "cosine"), (3, 1, "cosine"), (16, 256, "cosine"),
                 (5, 7, "square root")]
        cases = [(T, n, name, schedules[name]) for T, n, name in cases]
        cases += [(6, 20, "a schedule above 1 (1.5 everywhere)", lambda r: 1.5),
                  (6, 20, "a schedule that drops to 0 at once", lambda r: 0.0)]
        for T, n, name, schedule in cases:
            what = f"{T} steps, {n} tokens, {name} schedule"
            got = c.call(fn, T, n, schedule)
            plan = as_token_list(got) if isinstance(got, torch.Tensor) else (
                [int(k) for k in got] if isinstance(got, (list, tuple)) and all(
                    isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in got) else None)
            c.expect(plan is not None, f"a list of integers for {what}", f"{T} integers", _got(got),
                     "return one count per step, as a list of ints")
            expected = _plan(schedule, T, n)
            mistakes = [
                (dict(rounding=math.ceil), "round the still-masked count down (math.floor), as MaskGIT's code does"),
                (dict(shift=1), "after step t (t = 1 .. steps - 1) the schedule is read at t / steps; at 0 it is "
                 "1, everything masked"),
                (dict(clamp=False), "clamp the count still masked to at least 1 and at most one fewer than before: "
                 "every step but the last leaves a token to decide, and a count never grows"),
                (dict(remaining=True), "return how many tokens each step decides, not how many are still masked "
                 "after it"),
            ]
            specific = next((h for change, h in mistakes if plan == _plan(schedule, T, n, **change) != expected),
                            None)
            c.expect(len(plan) == T, f"one count per step for {what}", T, len(plan),
                     specific or "the plan has exactly `steps` entries, the last one for the final step")
            c.expect(plan == expected, f"the tokens decided per step for {what}", expected, plan, specific or hint)
