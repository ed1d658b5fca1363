"""Grading specs of chapter 4: straight-through and multi-scale quantization, Jacobi verification, LANTERN,
MaskGIT's decoding plan."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tools.grading.core import Case, Spec, describe, ids_of, same_ids, t, tensor_close
from tools.grading.runner import build_schedule


def _distances(z, codebook):
    return (z.double()[:, None, :] - codebook.double()[None, :, :]).pow(2).sum(-1)


def _nearest_ok(dist, idx, tol) -> bool:
    chosen = dist.gather(1, idx.reshape(-1, 1)).squeeze(1)
    best = dist.min(1).values
    return bool((chosen <= best + tol * (1 + best)).all())


def _st_cases(rng):
    cases = []
    for k in range(5):
        N, D, K = int(rng.integers(1, 40)), int(rng.integers(1, 9)), int(rng.integers(1, 40))
        dtype = torch.float32 if k % 2 else torch.float64
        codebook = rng.standard_normal((K, D)) * rng.uniform(0.3, 3, (K, 1))  # codes of different lengths
        z = rng.standard_normal((N, D)) * 1.5
        upstream = rng.standard_normal((N, D))
        cases.append(Case((t(z, dtype), t(codebook, dtype), t(upstream, dtype)), f"{N} vectors of dimension {D}, "
                          f"{K} codes ({str(dtype)[6:]})", kind="grad"))
    return cases


def _st(case):
    z, codebook, _ = case.args
    return _distances(z, codebook).argmin(1)


def _st_compare(got, expected, case):
    z, codebook, upstream = case.args
    out, grad = got
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return f"expected (z_q, indices), got {describe(out)}"
    z_q, idx = out
    ids = ids_of(idx)
    if ids is None or len(ids) != len(z) or not all(0 <= i < len(codebook) for i in ids):
        return f"indices: expected {len(z)} code ids, got {describe(idx)}"
    idx = torch.tensor(ids)
    if not _nearest_ok(_distances(z, codebook), idx, 1e-4 if z.dtype == torch.float32 else 1e-9):
        return "indices: not the nearest codes"
    reason = tensor_close(z_q, codebook.double()[idx], 1e-5 if z.dtype == torch.float32 else 1e-9, 1e-5)
    if reason:
        return f"z_q: {reason}"
    if grad is None:
        return "no gradient reaches z through z_q"
    reason = tensor_close(grad, upstream.double(), 1e-6, 1e-5)
    return f"the gradient on z: {reason}" if reason else None


def _ms_cases(rng):
    cases = []
    for k in range(4):
        B, D, K = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(4, 64))
        H = int(rng.integers(2, 9))
        inner = sorted(set(int(s) for s in rng.integers(1, H, int(rng.integers(0, 4)))))
        scales = tuple(inner + [H]) if k else (H,)
        low = rng.standard_normal((B, D, 1, 1)) + 0.5 * rng.standard_normal((B, D, H, H))
        f = torch.as_tensor(low).expand(B, D, H, H) if k == 0 else torch.as_tensor(low)
        dtype = torch.float32 if k == 2 else torch.float64
        cases.append(Case((f.to(dtype).contiguous(), t(rng.standard_normal((K, D)), dtype), scales),
                          f"(B, D, H, H) = {(B, D, H, H)}, {K} codes, scales {scales}"))
    return cases


def _ms_compare(got, expected, case):
    f, codebook, scales = case.args
    B, D, H, _ = f.shape
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected (maps, f_hat), got {describe(got)}"
    maps, f_hat = got
    if not isinstance(maps, (list, tuple)) or len(maps) != len(scales):
        return f"expected {len(scales)} token maps, got {describe(maps)}"
    fd, cd = f.double(), codebook.double()
    residual, replay = fd, torch.zeros_like(fd)
    tol = 1e-4 if f.dtype == torch.float32 else 1e-9
    for s, m in zip(scales, maps):
        if not isinstance(m, torch.Tensor) or m.is_floating_point() or tuple(m.shape) != (B, s, s):
            return f"the token map of scale {s}: expected a ({B}, {s}, {s}) id tensor, got {describe(m)}"
        m = m.long()
        if bool(((m < 0) | (m >= len(cd))).any()):
            return f"the token map of scale {s}: ids out of range"
        r = residual if s == H else F.interpolate(residual, size=(s, s), mode="area")
        if not _nearest_ok(_distances(r.permute(0, 2, 3, 1).reshape(-1, D), cd), m.reshape(-1), tol):
            return f"the token map of scale {s}: not the nearest codes of the area-downsampled residual"
        codes = cd[m].permute(0, 3, 1, 2)
        back = codes if s == H else F.interpolate(codes, size=(H, H), mode="bicubic")
        replay, residual = replay + back, residual - back
    reason = tensor_close(f_hat, replay, 1e-4 if f.dtype == torch.float32 else 1e-9, 1e-5)
    return f"f_hat: {reason}" if reason else None


def _inverse_cdf(r, u):
    cdf = torch.cumsum(r, 0)
    return min(int((cdf <= u * cdf[-1]).sum()), len(r) - 1)


def _sjd_cases(rng):
    cases = []
    for k in range(16):
        L, V = int(rng.integers(1, 9)), int(rng.integers(2, 12))
        p = rng.dirichlet(np.ones(V) * rng.uniform(0.3, 3), size=L)
        mix = float(rng.choice([0.0, 0.5, 0.9, 1.0]))
        q = mix * p + (1 - mix) * rng.dirichlet(np.ones(V), size=L)
        drafts = np.array([rng.choice(V, p=row / row.sum()) for row in q])
        u = rng.uniform(0, 1, (L, 2))
        u[:, 0] = u[:, 0] ** 2
        if k == 0:
            p[0, drafts[0]] = 0.0
            p[0] /= p[0].sum()
            u[0, 0] = 0.0
        dtype = torch.float32 if k == 1 else torch.float64
        cases.append(Case((t(p, dtype), t(q, dtype), t(drafts, torch.long), t(u, dtype)),
                          f"{L} positions over {V} tokens" + (", p = 0 at the first draft, u = 0" if k == 0 else "")))
    return cases


def _sjd(case):
    p, q, drafts, u = (a.double() if a.is_floating_point() else a for a in case.args)
    out = []
    for i, x in enumerate(drafts.tolist()):
        if float(u[i, 0]) * float(q[i, x]) < float(p[i, x]):
            out.append(x)
            continue
        r = (p[i] - q[i]).clamp_min(0)
        out.append(_inverse_cdf(r if r.sum() > 0 else p[i], float(u[i, 1])))
        break
    return out


def _lantern_cases(rng):
    from arlib.vision.jacobi import lantern_neighbors

    cases = []
    while len(cases) < 12:
        V, D = int(rng.integers(4, 40)), int(rng.integers(1, 5))
        k = int(rng.integers(1, V + 1))
        neighbors = lantern_neighbors(t(rng.standard_normal((V, D))), k)
        p = t(rng.dirichlet(np.ones(V) * rng.uniform(0.2, 3)))
        x = int(rng.integers(V))
        delta = float(rng.choice([0.0, 1.0])) if len(cases) < 2 else float(rng.uniform(0, 0.5))
        extra = torch.cumsum(torch.where(neighbors[x] == x, 0.0, p[neighbors[x]]), 0)
        if 0 < delta < 1 and float((extra - delta).abs().min()) < 1e-6:
            continue  # a partial sum on the boundary: rounding could go either way
        cases.append(Case((p, x, neighbors, delta), f"{V} codes, {k} neighbours, x = {x}, delta = {delta:.4g}"))
    return cases


def _lantern(case):
    from arlib.vision.jacobi import proximity_set

    return proximity_set(*case.args).tolist()


def _plan_cases(rng):
    cases = []
    for k in range(8):
        steps, n = int(rng.integers(1, 20)), int(rng.choice([1, 7, 49, 64, 256]))
        if k == 0:
            schedule = {"kind": "cosine"}
        elif k == 7:  # above 1, or 0 at once: only the clamps decide
            schedule = {"kind": "constant", "value": float(rng.choice([0.0, 1.25]))}
        else:
            schedule = {"kind": "power", "a": float(rng.choice([0.5, 1.0, 2.0, 3.0, rng.uniform(0.3, 4)]))}
        cases.append(Case((steps, n, {"schedule": schedule}), f"{steps} steps, {n} tokens, schedule {schedule}",
                          kind="schedule"))
    cases.append(Case((int(rng.integers(50, 70)), 49, {"schedule": {"kind": "cosine"}}),
                      "more steps than tokens, cosine", kind="schedule"))
    return cases


def _plan(case):
    from arlib.vision.maskgit import decoding_plan

    steps, n, schedule = case.args
    return decoding_plan(steps, n, build_schedule(schedule["schedule"]))


SPECS = [
    Spec("4.1", ("vq_straight_through",), ("arlib.vision.vq.nearest_code", "arlib.vision.vq.VectorQuantizer.forward"),
         _st_cases, _st, _st_compare),
    Spec("4.2", ("multiscale_quantize",), ("arlib.vision.vq.MultiScaleQuantizer.forward",), _ms_cases,
         lambda case: None, _ms_compare),
    Spec("4.3", ("verify_window",), ("arlib.vision.jacobi.jacobi_generate",), _sjd_cases, _sjd, same_ids),
    Spec("4.4", ("proximity",), ("arlib.vision.jacobi.proximity_set", "arlib.vision.jacobi._relax"), _lantern_cases,
         _lantern, same_ids),
    Spec("4.5", ("tokens_per_step",), ("arlib.vision.maskgit.decoding_plan",), _plan_cases, _plan, same_ids),
]
