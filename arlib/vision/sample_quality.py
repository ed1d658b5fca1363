"""Scores for sets of generated images beyond the Fréchet distance, with bootstrap intervals (chapter 4).

- :func:`kernel_distance`: the kernel inception distance (KID, Bińkowski et al. 2018, "Demystifying MMD
  GANs", section 3): the unbiased estimate of the squared maximum mean discrepancy with the cubic
  polynomial kernel ``k(x, y) = (x . y / d + 1)^3``. Unlike the Fréchet distance it has no bias that
  depends on the number of samples, so sets of different sizes compare.
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision
  and Recall Metric for Assessing Generative Models", section 2): each set's manifold is the union of
  balls around its points, each ball reaching the point's k-th nearest neighbour in the same set;
  precision is the share of samples inside the real manifold (are samples realistic?), recall the share
  of real images inside the samples' manifold (do samples cover the data?).
- :func:`nearest_distances`: each query's distance to its nearest row of a bank (memorization check:
  samples much closer to training images than held-out images are would be copies).
- :func:`score_samples` and :func:`difference`: every score of one sample set with a bootstrap interval,
  and the interval of the difference between two sets scored against the same reference.

Features are rows (N, d) of any real embedding; chapter 4 uses :class:`arlib.vision.image_metrics.FashionClassifier`'s.
"""

from __future__ import annotations

import math

import torch

from arlib.validate import describe, int_at_least, int_in_range, number_in, positive_int
from arlib.vision.image_metrics import frechet_distance

__all__ = ["kernel_distance", "precision_recall", "nearest_distances", "score_samples", "difference",
           "SCORE_NAMES"]

SCORE_NAMES = ("accuracy", "frechet", "kid", "precision", "recall")  # what score_samples reports
_Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval


def _features(x, name: str, d: int | None = None, at_least: int = 2) -> torch.Tensor:
    """x: a real (N >= at_least, d) tensor with finite entries, as float64."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype == torch.bool or x.is_complex() \
            or x.shape[0] < at_least or x.shape[1] < 1:
        raise ValueError(f"{name}: expected a (N >= {at_least}, d) tensor of real features, got {describe(x)}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{name}: expected {d} features per row like the first set, got {x.shape[1]}")
    x = x.double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def _polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3  # (N, M)


def _mmd2(k_aa: torch.Tensor, k_bb: torch.Tensor, k_ab: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> float:
    """Unbiased MMD^2 from kernel matrices, each row counted ``w`` times (bootstrap counts); pairs of one
    original row with itself are left out, as the diagonal is in the unbiased estimator."""
    wa, wb = wa.to(k_aa.dtype), wb.to(k_aa.dtype)

    def within(k, w):
        total = w @ k @ w - (w * w * k.diagonal()).sum()
        pairs = w.sum() ** 2 - (w * w).sum()
        return total / pairs
    return float(within(k_aa, wa) + within(k_bb, wb) - 2 * (wa @ k_ab @ wb) / (wa.sum() * wb.sum()))


def kernel_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """KID: the unbiased squared MMD between features (N >= 2, d) and (M >= 2, d) with the kernel
    ``(x . y / d + 1)^3`` (Bińkowski et al. 2018, eq. 3 with their kernel). It is 0 in expectation when both
    sets come from one distribution, so small negative values occur; computed on the whole sets (not on
    subsets)."""
    a = _features(features_a, "features_a")
    b = _features(features_b, "features_b", a.shape[1])
    wa, wb = a.new_ones(len(a)), b.new_ones(len(b))
    return _mmd2(_polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b), wa, wb)


def _pairwise(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distances (N, M) in float64, in chunks of rows."""
    return torch.cat([torch.cdist(a[i:i + chunk], b) for i in range(0, len(a), chunk)])


def _radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's distance to its k-th nearest other row (the ball of the manifold estimate), (N,)."""
    distances = _pairwise(x, x)
    return distances.kthvalue(k + 1, dim=1).values  # the 0 to itself is the first value


def _in_balls(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(Q, P) bool: is query q within the ball of point p?"""
    return torch.cat([torch.cdist(queries[i:i + chunk], points) <= radii[None] for i in range(0, len(queries), chunk)])


def _inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(Q,) bool: is each query within the ball of some point?"""
    return torch.cat([_in_balls(queries[i:i + chunk], points, radii).any(1) for i in range(0, len(queries), chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, *, per_row: bool = False):
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2) of ``fake`` (M, d) against ``real``
    (N, d), both with more than k rows; k-th nearest-neighbour balls, k = 3 as in the paper. Returns
    (precision, recall), or with ``per_row=True`` the indicators behind them: (fake inside the real
    manifold (M,) bool, real inside the fake manifold (N,) bool)."""
    k = positive_int(k, "k")
    r = _features(real, "real", at_least=k + 1)
    f = _features(fake, "fake", r.shape[1], at_least=k + 1)
    fake_in_real = _inside(f, r, _radii(r, k))
    real_in_fake = _inside(r, f, _radii(f, k))
    if per_row:
        return fake_in_real, real_in_fake
    return fake_in_real.double().mean().item(), real_in_fake.double().mean().item()


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Euclidean distance (Q,) from each query row (Q, d) to its nearest bank row (N, d): flatten images to
    rows first. Computed in chunks of ``chunk`` queries (a (chunk, N) block at a time)."""
    q = _features(queries, "queries", at_least=1)
    b = _features(bank, "bank", q.shape[1], at_least=1)
    chunk = positive_int(chunk, "chunk")
    return torch.cat([torch.cdist(q[i:i + chunk], b).min(1).values for i in range(0, len(q), chunk)])


def score_samples(features: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor,
                  reference: torch.Tensor, *, k: int = 3, boots: int = 200, seed: int = 0) -> dict:
    """Every score of one set of class-conditional samples, with a bootstrap interval.

    features (N, d): the samples' features; predictions and labels (N,): the classifier's class and the
    class asked for; reference (M, d): features of real held-out images. Returns ``{score: {"value",
    "low", "high", "replicates"}}`` for ``SCORE_NAMES``: class-consistency accuracy, Fréchet distance, KID,
    precision and recall (k-NN balls, ``k``), plus ``"per_class"`` (accuracy per class id, (C,) list).

    The interval is ``value +- 1.96 sd`` of ``boots`` bootstrap replicates (samples and reference rows both
    resampled; KID leaves out the pairs of a row with its own copies; precision and recall keep each ball
    at its radius on the full set, so a duplicated row cannot shrink one, and build each manifold from
    the rows drawn). A resample has fewer distinct rows, which moves the Fréchet distance up and the
    precision and recall down: the normal interval uses the replicates' spread, not their centre. The
    reference is resampled with the same indices for every call with the same ``seed`` and sizes:
    :func:`difference` pairs them."""
    f = _features(features, "features")
    ref = _features(reference, "reference", f.shape[1], at_least=k + 1)
    if len(f) <= k:
        raise ValueError(f"features: expected more than k = {k} rows, got {len(f)}")
    for name, t in (("predictions", predictions), ("labels", labels)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.shape != (len(f),):
            raise ValueError(f"{name}: expected a ({len(f)},) torch.long tensor of class ids, got {describe(t)}")
    boots = int_at_least(boots, "boots", 2)
    int_in_range(seed, "seed", 0, 2**63 - 1)
    correct = (predictions.cpu() == labels.cpu()).double()  # (N,)
    fake_in_ball = _in_balls(f, ref, _radii(ref, k))  # (N, M): sample i inside real image j's ball
    real_in_ball = _in_balls(ref, f, _radii(f, k))  # (M, N): real image j inside sample i's ball
    fake_in_real, real_in_fake = fake_in_ball.any(1), real_in_ball.any(1)
    k_ff, k_rr, k_fr = _polynomial_kernel(f, f), _polynomial_kernel(ref, ref), _polynomial_kernel(f, ref)
    n, m = len(f), len(ref)
    values = {"accuracy": correct.mean().item(), "frechet": frechet_distance(f, ref),
              "kid": _mmd2(k_ff, k_rr, k_fr, f.new_ones(n), f.new_ones(m)),
              "precision": fake_in_real.double().mean().item(), "recall": real_in_fake.double().mean().item()}
    g_ref = torch.Generator().manual_seed(seed)  # the reference's resamples: shared across sample sets
    g_fake = torch.Generator().manual_seed(seed + 1)
    replicates = {name: [] for name in SCORE_NAMES}
    for _ in range(boots):
        i = torch.randint(n, (n,), generator=g_fake)
        j = torch.randint(m, (m,), generator=g_ref)
        wi, wj = torch.bincount(i, minlength=n).double(), torch.bincount(j, minlength=m).double()
        replicates["accuracy"].append(correct[i].mean().item())
        replicates["frechet"].append(frechet_distance(f[i], ref[j]))
        replicates["kid"].append(_mmd2(k_ff, k_rr, k_fr, wi, wj))
        # a manifold is the union of the balls of the rows drawn (each at its full-set radius)
        replicates["precision"].append(fake_in_ball[i][:, wj > 0].any(1).double().mean().item())
        replicates["recall"].append(real_in_ball[j][:, wi > 0].any(1).double().mean().item())
    out = {}
    for name in SCORE_NAMES:
        spread = _Z95 * torch.tensor(replicates[name], dtype=torch.float64).std().item()
        out[name] = {"value": values[name], "low": values[name] - spread, "high": values[name] + spread,
                     "replicates": replicates[name]}
    classes = int(labels.max()) + 1 if len(labels) else 0
    out["per_class"] = [correct[labels.cpu() == c].mean().item() if bool((labels == c).any()) else math.nan
                        for c in range(classes)]
    return out


def difference(scores_a: dict, scores_b: dict, name: str, level: float = 0.95) -> tuple[float, float, float]:
    """(a - b, low, high): the difference of score ``name`` between two :func:`score_samples` results
    computed with the same seed, reference and sizes (their reference resamples are paired), with the
    normal interval of the paired replicates' differences at ``level``."""
    if name not in SCORE_NAMES:
        raise ValueError(f"name: expected one of {list(SCORE_NAMES)}, got {name!r}")
    number_in(level, "level", 0, 1, bounds="()")
    for arg, s in (("scores_a", scores_a), ("scores_b", scores_b)):
        if not isinstance(s, dict) or not isinstance(s.get(name), dict) or "replicates" not in s[name]:
            raise ValueError(f"{arg}: expected a score_samples result with {name!r} replicates")
    ra = torch.tensor(scores_a[name]["replicates"], dtype=torch.float64)
    rb = torch.tensor(scores_b[name]["replicates"], dtype=torch.float64)
    if ra.shape != rb.shape or len(ra) < 2:
        raise ValueError(f"scores_b: expected {len(ra)} replicates like scores_a (the same boots), got {len(rb)}")
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + level) / 2, dtype=torch.float64)))
    value = scores_a[name]["value"] - scores_b[name]["value"]
    spread = z * (ra - rb).std().item()
    return value, value - spread, value + spread
