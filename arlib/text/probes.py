"""Linear probes: what a representation tells about a label, measured by a fitted linear read-out.

:func:`logistic_probe` fits a multinomial logistic regression (softmax regression) from features to
class labels by L-BFGS with an L2 penalty chosen on a held-out part of the fitting rows, and scores it
on test rows (accuracy and cross-entropy). Chapter 1 uses it to compare what a GPT's hidden state and
what its own next-token distribution tell about characters further ahead (after Pal et al. 2023's
Future Lens, which probes hidden states for later tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arlib.validate import float_tensor, int_at_least, number_in, positive_int


def _rows(rows, name: str, n: int) -> None:
    if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.dtype != torch.long:
        raise ValueError(f"{name}: expected a 1-D torch.long tensor of row indices")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise ValueError(f"{name}: row indices must lie in [0, {n})")


def _fit(X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int) -> torch.Tensor:
    W = torch.zeros(X.shape[1], n_classes, dtype=X.dtype, requires_grad=True)  # (d + 1, C)
    optimizer = torch.optim.LBFGS([W], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(X @ W, y) + l2 * W[:-1].pow(2).sum()  # the bias row is not penalized
        loss.backward()
        return loss

    optimizer.step(closure)
    return W.detach()


def logistic_probe(features: torch.Tensor, labels: torch.Tensor, fit_rows: torch.Tensor, test_rows: torch.Tensor,
                   n_classes: int, l2_grid=(1e-4, 1e-3, 1e-2), max_iter: int = 100, seed: int = 0) -> dict:
    """Softmax regression from ``features`` (N, d) to ``labels`` (N,) in ``[0, n_classes)``.

    Features are standardized with the fitting rows' mean and spread. The L2 weight is chosen from
    ``l2_grid`` by fitting on 80 % of ``fit_rows`` and scoring cross-entropy on the other 20 %; the probe
    is then refitted on all of ``fit_rows``. Returns ``{"accuracy", "nll" (mean over test rows), "nll_rows"
    (per test row, nats), "correct_rows", "l2"}``."""
    float_tensor(features, "features", dim=2, expected="a floating (N, d) tensor")
    if not isinstance(labels, torch.Tensor) or labels.shape != features.shape[:1] or labels.dtype != torch.long:
        raise ValueError(f"labels: expected a ({features.shape[0]},) torch.long tensor of class ids")
    n_classes = positive_int(n_classes, "n_classes")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels: expected class ids in [0, {n_classes})")
    _rows(fit_rows, "fit_rows", len(features))
    _rows(test_rows, "test_rows", len(features))
    if len(fit_rows) < 10 or len(test_rows) < 1:
        raise ValueError("fit_rows, test_rows: expected at least 10 fitting rows and 1 test row")
    l2_grid = tuple(l2_grid) if isinstance(l2_grid, (tuple, list)) else l2_grid
    if not isinstance(l2_grid, tuple) or not l2_grid:
        raise ValueError(f"l2_grid: expected a non-empty list of L2 weights >= 0, got {l2_grid!r}")
    for l2 in l2_grid:
        number_in(l2, "l2_grid", 0, float("inf"), bounds="[)", expected="finite L2 weights >= 0")
    max_iter = positive_int(max_iter, "max_iter")
    seed = int_at_least(seed, "seed", 0)
    X = features.float()  # float32: L-BFGS converges as well and twice as fast on a CPU
    mean, std = X[fit_rows].mean(0), X[fit_rows].std(0).clamp_min(1e-8)
    X = torch.cat([(X - mean) / std, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)  # (N, d + 1)
    perm = fit_rows[torch.randperm(len(fit_rows), generator=torch.Generator().manual_seed(seed))]
    inner, held = perm[: int(0.8 * len(perm))], perm[int(0.8 * len(perm)):]
    scores = {}
    for l2 in l2_grid:
        W = _fit(X[inner], labels[inner], n_classes, l2, max_iter)
        scores[l2] = F.cross_entropy(X[held] @ W, labels[held]).item()
    l2 = min(scores, key=scores.get)
    W = _fit(X[fit_rows], labels[fit_rows], n_classes, l2, max_iter)
    logits = X[test_rows] @ W  # (N_test, C)
    nll_rows = F.cross_entropy(logits, labels[test_rows], reduction="none")
    correct = (logits.argmax(1) == labels[test_rows]).double()
    return {"accuracy": correct.mean().item(), "nll": nll_rows.mean().item(), "nll_rows": nll_rows,
            "correct_rows": correct, "l2": l2}


def group_means(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` (N,) within each group id of ``groups`` (N,), for the groups present, in
    increasing id order: the units of a bootstrap that respects correlation within a group."""
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.dtype == torch.bool:
        raise ValueError("values: expected a (N,) tensor of numbers")
    if not isinstance(groups, torch.Tensor) or groups.shape != values.shape or groups.dtype != torch.long:
        raise ValueError(f"groups: expected a ({len(values)},) torch.long tensor of group ids (values and groups "
                         "must match)")
    ids, inverse = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, values.double())
    return sums / torch.bincount(inverse, minlength=len(ids)).double()
