"""Superposition and data with known features: the toy model of Elhage et al. (2022) and the sparse
mixtures of monosemantic directions on which sparse autoencoders can be scored (Chen et al. 2025).

- :class:`ToyModel`: ``h = W x`` squeezes ``n`` sparse features into ``m < n`` dimensions and
  ``x' = ReLU(W^T h + b)`` reads them back (Elhage et al. 2022: their "ReLU output model"),
  trained with the importance-weighted squared error. Several instances (one per sparsity) train at once.
- :func:`toy_batch`: features ``x_i ~ U[0, 1]`` with probability ``p``, else 0.
- :func:`feature_dimensionality`: Elhage et al.'s ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2``, the
  fraction of a dimension that feature ``i`` owns; :func:`dimensions_per_feature`: ``m / ||W||_F^2``, the
  dimensions the model spends per feature it represents.
- :func:`phase_diagram`, :func:`classify_regime`, :func:`theoretical_phase_diagram`: the phase change of
  Elhage et al.: over a grid of feature density and relative importance of an extra feature, is the extra
  feature not represented, represented in superposition, or given a dimension of its own.
- :class:`SparseMixture`: ``x = sum_i h_i v_i (+ noise)`` with unit ground-truth directions ``v_i`` and
  sparse non-negative coefficients ``h_i``, each feature present with its own frequency ``p_i``: the
  statistical model of polysemantic activations in Chen et al. (2025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from arlib.validate import describe, float_tensor, int_at_least, is_int, number_in, positive_int
from arlib.validate import generator as check_generator


def _probabilities(name: str, p, size: int | None = None) -> torch.Tensor:
    """A float64 tensor of probabilities in (0, 1] (a number or a 1-D tensor of ``size`` entries)."""
    try:
        t = torch.as_tensor(p, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}: expected probabilities in (0, 1], got {p!r}") from None
    if size is not None and t.numel() == 1:
        t = t.expand(size)
    if (size is not None and t.numel() != size) or not bool(((t > 0) & (t <= 1)).all()):
        want = f"{size} " if size is not None else ""
        raise ValueError(f"{name}: expected {want}probabilities in (0, 1], got {p!r}")
    return t


def toy_batch(batch_size: int, n_features: int, p, generator: torch.Generator, n_instances: int = 1,
              device=None) -> torch.Tensor:
    """Sparse features (batch, instances, features): each ``x_i ~ U[0, 1]`` with probability ``p``, else 0.

    ``p`` is one number or one probability per instance (each instance is a separately trained toy model).
    """
    positive_int(batch_size, "batch_size")
    positive_int(n_features, "n_features")
    positive_int(n_instances, "n_instances")
    check_generator(generator, optional=False)
    p = _probabilities("p", p, n_instances).float()  # (I,)
    shape = (batch_size, n_instances, n_features)
    present = torch.rand(shape, generator=generator) < p[None, :, None]
    values = torch.rand(shape, generator=generator)
    return (values * present).to(device)


class ToyModel(nn.Module):
    """Elhage et al.'s ReLU output model, ``x' = ReLU(W^T W x + b)``, for ``n_instances`` independent copies.

    ``W`` (instances, m, n): column ``W[:, :, i]`` embeds feature ``i`` in the m hidden dimensions.
    """

    def __init__(self, n_features: int, n_hidden: int, n_instances: int = 1, generator: torch.Generator | None = None):
        super().__init__()
        positive_int(n_features, "n_features")
        positive_int(n_hidden, "n_hidden")
        positive_int(n_instances, "n_instances")
        W = torch.empty(n_instances, n_hidden, n_features)
        bound = math.sqrt(6 / (n_hidden + n_features))  # Xavier-uniform, as the paper's code uses
        W.uniform_(-bound, bound, generator=generator)
        self.W = nn.Parameter(W)
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, I, n) -> reconstruction (B, I, n)."""
        float_tensor(x, "x", finite=False, expected=f"a (batch, {self.W.shape[0]}, {self.W.shape[2]}) floating tensor")
        if x.dim() != 3 or x.shape[1:] != (self.W.shape[0], self.W.shape[2]):
            raise ValueError(f"x: expected (batch, {self.W.shape[0]}, {self.W.shape[2]}), got {tuple(x.shape)}")
        h = torch.einsum("imn,bin->bim", self.W, x)  # (B, I, m): the compressed representation
        return F.relu(torch.einsum("imn,bim->bin", self.W, h) + self.b)  # (B, I, n)


def toy_loss(model: ToyModel, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Importance-weighted squared error, summed over features and instances, averaged over the batch;
    importance: one finite weight >= 0 per feature (shared by the instances), or an (instances, features)
    table of them (one row per instance)."""
    if not isinstance(model, ToyModel):
        raise TypeError(f"model: expected a ToyModel, got {type(model).__name__}")
    float_tensor(x, "x", dim=3, finite=False, expected="a (batch, instances, features) floating tensor")
    importance = _importance(importance, x.shape[1], x.shape[-1], x.dtype, x.device)
    return (importance * (x - model(x)) ** 2).sum(dim=(1, 2)).mean()


def _importance(importance, n_instances: int, n_features: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Importance as (features,) or (instances, features), checked: finite weights >= 0."""
    try:
        t = torch.as_tensor(importance, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or not ((t.dim() == 1 and t.numel() == n_features)
                         or (t.dim() == 2 and tuple(t.shape) == (n_instances, n_features))) \
            or not bool((torch.isfinite(t) & (t >= 0)).all()):
        raise ValueError(f"importance: expected {n_features} finite non-negative weights, one per feature "
                         f"(or an ({n_instances}, {n_features}) table of them, one row per instance)")
    return t


def train_toy_model(n_features: int, n_hidden: int, p, importance, steps: int = 3000, batch_size: int = 1024,
                    lr: float = 1e-3, seed: int = 0, device=None, lr_decay: str = "constant") -> ToyModel:
    """Train one toy model per entry of ``p`` (in parallel, one instance each) with Adam, as the paper does.

    ``importance``: one weight per feature shared by the instances, or an (instances, features) table.
    ``lr_decay``: ``"constant"`` (the paper's notebook) or ``"cosine"``, a decay from ``lr`` to 0 over the
    steps (ours: it lets a short, hot run settle into clean configurations).
    """
    p = _probabilities("p", p)
    number_in(lr, "lr", 0, math.inf, bounds="()", expected="a finite learning rate > 0")
    if not is_int(seed):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    positive_int(steps, "steps")
    generator = torch.Generator().manual_seed(seed)
    model = ToyModel(n_features, n_hidden, len(p), generator).to(device)
    if lr_decay not in ("constant", "cosine"):
        raise ValueError(f"lr_decay: expected 'constant' or 'cosine', got {lr_decay!r}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    importance = _importance(importance, len(p), n_features, device=device)
    for step in range(positive_int(steps, "steps")):
        if lr_decay == "cosine":
            optimizer.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = toy_batch(batch_size, n_features, p, generator, len(p), device)
        loss = toy_loss(model, x, importance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def _fast_batch(batch_size: int, n_features: int, p: torch.Tensor, generator: torch.Generator,
                device=None) -> torch.Tensor:
    """The distribution of :func:`toy_batch` from one uniform draw: ``x = u / p`` where ``u < p``, else 0 (given
    ``u < p``, ``u / p`` is uniform on [0, 1)). Half the random numbers; a different stream for a seed."""
    u = torch.rand(batch_size, len(p), n_features, generator=generator)
    pp = p.float()[None, :, None]
    return torch.where(u < pp, u / pp, torch.zeros(())).to(device)


def _train_instances(n_features: int, n_hidden: int, p: torch.Tensor, importance: torch.Tensor, steps: int,
                     batch_size: int, lr: float, seed: int, device=None) -> ToyModel:
    """One ToyModel instance per entry of ``p`` (importance (instances, features)), trained together with Adam
    whose learning rate decays from ``lr`` to 0 along a cosine (the decay is ours: it settles the sparse
    instances, whose gradients are noisy, into clean configurations within few steps)."""
    positive_int(steps, "steps")
    positive_int(batch_size, "batch_size")
    number_in(lr, "lr", 0, math.inf, bounds="()", expected="a finite learning rate > 0")
    if not is_int(seed):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    model = ToyModel(n_features, n_hidden, len(p), generator).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    importance = importance.to(device)
    for _ in range(steps):
        x = _fast_batch(batch_size, n_features, p, generator, device)
        loss = (importance * (x - model(x)) ** 2).sum(dim=(1, 2)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` for each feature column of ``W`` (..., m, n) -> (..., n).

    A feature with its own dimension has D = 1, an antipodal pair shares one (D = 1/2 each), a feature the
    model ignores has D = 0. Summed over features, D is at most m (Elhage et al. 2022, "The Geometry of Superposition").
    """
    float_tensor(W, "W", expected="a finite floating tensor (..., m, n)")
    if W.dim() < 2:
        raise ValueError(f"W: expected (..., m, n), got shape {tuple(W.shape)}")
    norms2 = (W * W).sum(-2)  # (..., n)
    unit = W / norms2.clamp_min(1e-12).sqrt().unsqueeze(-2)  # (..., m, n)
    overlaps = (unit.transpose(-1, -2) @ W) ** 2  # (..., n, n): (W_i_hat . W_j)^2
    return torch.where(norms2 > 1e-12, norms2 / overlaps.sum(-1).clamp_min(1e-12), torch.zeros_like(norms2))


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """``m / ||W||_F^2`` for each model in ``W`` (..., m, n) -> (...): the hidden dimensions per represented feature.

    A feature the model represents has ``||W_i|| ~ 1`` and one it drops has ``W_i ~ 0``, so ``||W||_F^2`` counts
    the represented features and its ratio to ``m`` is the share of a dimension each gets: 1 when ``m``
    features have a dimension each, 1/2 when every dimension holds an antipodal pair (Elhage et al. 2022,
    "The Geometry of Superposition", their "dimensions per feature"). An all-zero W gives inf.
    """
    float_tensor(W, "W", expected="a finite floating tensor (..., m, n)")
    if W.dim() < 2:
        raise ValueError(f"W: expected (..., m, n), got shape {tuple(W.shape)}")
    return W.shape[-2] / (W * W).sum(dim=(-2, -1))


# --- the phase change: is an extra feature dropped, superposed, or given its own dimension? ----------------

REGIMES = ("not represented", "superposition", "dedicated")
"""The regimes of :func:`classify_regime`, indexed by its labels 0, 1, 2."""
NOT_REPRESENTED, SUPERPOSITION, DEDICATED = 0, 1, 2


def classify_regime(W: torch.Tensor, extra: int = -1, norm_threshold: float = 0.5,
                    interference_threshold: float = 0.25) -> torch.Tensor:
    """Which regime the feature ``extra`` of each toy model in ``W`` (..., m, n) is in: a long tensor (...)
    of labels into :data:`REGIMES`.

    The two quantities are Elhage et al.'s: the feature's norm ``||W_e||`` (is it represented at all) and
    its interference ``sum_{j != e} (W_e_hat . W_j)^2`` (does it share its direction with other features).

    - ``NOT_REPRESENTED`` (0): ``||W_e|| < norm_threshold``;
    - ``SUPERPOSITION`` (1): represented, with interference ``> interference_threshold``;
    - ``DEDICATED`` (2): represented, with interference at most that (a direction of its own; with n = 2
      features in m = 1 dimension, the other feature has been dropped to make room).

    The thresholds are ours. A trained toy model's feature norms sit near 1 (kept) or near 0 (dropped), so
    0.5 splits them with a margin on either side; an antipodal partner of norm ~1 gives interference ~1 and
    an orthogonal or dropped one ~0, so 0.25 (a partner of norm 0.5 pointing the same line) splits those.
    """
    float_tensor(W, "W", expected="a finite floating tensor (..., m, n)")
    if W.dim() < 2 or W.shape[-1] < 2:
        raise ValueError(f"W: expected (..., m, n) with n >= 2 features, got shape {tuple(W.shape)}")
    n = W.shape[-1]
    if not is_int(extra) or not -n <= extra < n:
        raise ValueError(f"extra: expected a feature index in [-{n}, {n}), got {extra!r}")
    number_in(norm_threshold, "norm_threshold", 0, math.inf, bounds="()", expected="a finite number > 0")
    number_in(interference_threshold, "interference_threshold", 0, math.inf, bounds="()",
              expected="a finite number > 0")
    extra = extra % n
    w = W[..., extra]  # (..., m)
    norm = w.norm(dim=-1)
    unit = w / norm.clamp_min(1e-12).unsqueeze(-1)
    others = torch.cat([W[..., :extra], W[..., extra + 1:]], dim=-1)  # (..., m, n - 1)
    interference = ((unit.unsqueeze(-1) * others).sum(-2) ** 2).sum(-1)  # sum_j (W_e_hat . W_j)^2
    labels = torch.where(interference > interference_threshold, SUPERPOSITION, DEDICATED)
    return torch.where(norm < norm_threshold, NOT_REPRESENTED, labels).long()


@dataclass
class PhaseDiagram:
    """Regimes of the extra feature over a grid: rows are relative importances, columns densities.

    ``regimes`` (R, P) labels into :data:`REGIMES`; ``extra_norm`` and ``interference`` (R, P) the two
    quantities :func:`classify_regime` thresholds; ``W`` (R, P, m, n) the learned embeddings; ``losses``
    (R, P) each model's final importance-weighted loss on a fresh batch.
    """

    densities: torch.Tensor
    importances: torch.Tensor
    regimes: torch.Tensor
    extra_norm: torch.Tensor
    interference: torch.Tensor
    W: torch.Tensor
    losses: torch.Tensor

    def __post_init__(self):
        for name in ("densities", "importances"):
            float_tensor(getattr(self, name), name, dim=1, expected="a 1-D floating tensor")
        shape = (len(self.importances), len(self.densities))
        if not isinstance(self.regimes, torch.Tensor) or tuple(self.regimes.shape) != shape \
                or self.regimes.is_floating_point():
            raise ValueError(f"regimes: expected a {shape} integer tensor, got {describe(self.regimes)}")
        for name in ("extra_norm", "interference", "losses"):
            t = getattr(self, name)
            float_tensor(t, name, finite=False, expected=f"a {shape} floating tensor")
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected a {shape} floating tensor, got {describe(t)}")
        float_tensor(self.W, "W", dim=4, finite=False, expected=f"a ({shape[0]}, {shape[1]}, m, n) floating tensor")
        if tuple(self.W.shape[:2]) != shape:
            raise ValueError(f"W: expected a ({shape[0]}, {shape[1]}, m, n) floating tensor, got {describe(self.W)}")


def phase_diagram(densities, relative_importances, n_features: int = 2, n_hidden: int = 1, steps: int = 1000,
                  batch_size: int = 512, lr: float = 3e-2, restarts: int = 3, seed: int = 0,
                  device=None) -> PhaseDiagram:
    """Train toy models over the grid (relative importances x densities), all as instances of one batched
    ToyModel, and classify the regime of the last ("extra") feature in each cell with :func:`classify_regime`.

    Every feature has the cell's density ``p = 1 - S``; the first ``n_features - 1`` have importance 1 and
    the extra one the cell's relative importance: Elhage et al.'s set-up for their phase diagrams (n = 2
    features in m = 1 dimension, and 3 in 2). Ours: the grid the caller passes; Adam with a cosine decay
    from ``lr`` (defaults 1,000 steps from 3e-2, batch 512: shorter and hotter than the paper's notebook,
    Adam at 1e-3 for many thousand steps, to fit a CPU); and ``restarts`` models per cell from different
    initializations, of which the one with the lowest loss on a fresh batch of 8,192 is kept. Restarts
    matter in one dimension: two features initialized with the same sign cannot become antipodal without
    one shrinking through 0, and a model can stall there in a configuration that is not the optimum.
    Returns a :class:`PhaseDiagram`, rows following ``relative_importances`` and columns ``densities``.
    """
    densities = _probabilities("densities", densities)
    importances = _relative_importances(relative_importances)
    n_features = int_at_least(n_features, "n_features", 2, expected="an int >= 2 (one extra feature and others)")
    positive_int(n_hidden, "n_hidden")
    restarts = positive_int(restarts, "restarts")
    R, P = len(importances), len(densities)
    # instance (k * R + r) * P + j: restart k, importance r, density j
    p = densities.repeat(restarts * R)
    table = torch.ones(restarts * R * P, n_features)
    table[:, -1] = importances.float().repeat_interleave(P).repeat(restarts)
    model = _train_instances(n_features, n_hidden, p, table, steps, batch_size, lr, seed, device)
    with torch.no_grad():
        x = _fast_batch(8192, n_features, p, torch.Generator().manual_seed(seed + 1), device)
        losses = (table.to(x.device) * (x - model(x)) ** 2).sum(-1).mean(0).cpu().reshape(restarts, R, P)
    losses, best = losses.min(0)  # (R, P): the restart with the lowest loss
    W = model.W.detach().cpu().reshape(restarts, R, P, n_hidden, n_features)
    W = W.gather(0, best[None, :, :, None, None].expand(1, R, P, n_hidden, n_features))[0]
    w = W[..., -1]
    norm = w.norm(dim=-1)
    unit = w / norm.clamp_min(1e-12).unsqueeze(-1)
    interference = ((unit.unsqueeze(-1) * W[..., :-1]).sum(-2) ** 2).sum(-1)
    return PhaseDiagram(densities.float(), importances.float(), classify_regime(W), norm, interference, W, losses)


def _relative_importances(values) -> torch.Tensor:
    try:
        t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.numel() == 0 or not bool((torch.isfinite(t) & (t >= 0)).all()):
        raise ValueError(f"relative_importances: expected finite weights >= 0, got {values!r}")
    return t


def _mean_sq_error(a: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``E[(U - ReLU(a U + beta))^2]`` for ``U ~ U[0, 1]`` and ``a > 0``, in closed form: the output is 0 for
    ``U < z = clamp(-beta / a, 0, 1)`` and ``a U + beta`` above it."""
    z = (-beta / a).clamp(0, 1)
    c = 1 - a
    return z ** 3 / 3 + c * c * (1 - z ** 3) / 3 - c * beta * (1 - z * z) + beta * beta * (1 - z)


def _mean_sq_relu(c: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``E[ReLU(beta - c U)^2]`` for ``U ~ U[0, 1]`` and ``c > 0``: an output that should be 0."""
    w = (beta / c).clamp(0, 1)
    return beta * beta * w - beta * c * w * w + c * c * w ** 3 / 3


def _antipodal_loss(params: torch.Tensor, p: torch.Tensor, r: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Exact expected toy loss of the n = 2, m = 1 model with ``W = [u, -v]`` (u, v > 0) and biases b1, b2.

    params (..., 4) = (log u, log v, b1, b2); p, r (...): density and importance of feature 2 (feature 1 has
    importance 1). With h = u x1 - v x2 the outputs are ReLU(u^2 x1 - uv x2 + b1) and ReLU(v^2 x2 - uv x1 + b2);
    averaging over which features are on leaves 1-D integrals in closed form and one 2-D integral (both on)
    whose inner integral is closed form and outer one a midpoint rule over ``nodes`` in (0, 1).
    """
    u, v, b1, b2 = params[..., 0].exp(), params[..., 1].exp(), params[..., 2], params[..., 3]
    c = u * v

    def feature(s, bias):  # the loss of one feature, whose own weight^2 is s and whose partner pushes it by -c
        off = F.relu(bias) ** 2  # neither on
        alone = _mean_sq_error(s, bias)  # only this one on
        other = _mean_sq_relu(c, bias)  # only the partner on: the output should be 0
        both = _mean_sq_error(s.unsqueeze(-1), bias.unsqueeze(-1) - c.unsqueeze(-1) * nodes).mean(-1)
        return (1 - p) ** 2 * off + p * (1 - p) * (alone + other) + p * p * both

    return feature(u * u, b1) + r * feature(v * v, b2)


def _minimize_antipodal(params: torch.Tensor, p, r, nodes, iterations: int, scale) -> torch.Tensor:
    """L-BFGS on the antipodal losses of all cells (independent problems), each divided by ``scale`` (the
    loss of the best other configuration) so that no cell dominates the sum; the per-cell minima."""
    optimizer = torch.optim.LBFGS([params], lr=1, max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = (_antipodal_loss(params, p, r, nodes) / scale).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return _antipodal_loss(params, p, r, nodes)


def theoretical_phase_diagram(densities, relative_importances, quadrature: int = 128,
                              iterations: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase diagram of n = 2 features in m = 1 dimension from the exact expected loss, not training.

    For each cell (relative importance r of feature 2, density p of both) compare the lowest expected loss
    of the three configurations:

    - not represented, ``W = [1, 0]``, ``b = [0, p/2]``: feature 2 is predicted by its mean, loss
      ``r Var(x2) = r (p/3 - p^2/4)`` (these norms and biases are the optimum of the configuration);
    - dedicated, ``W = [0, 1]``, ``b = [p/2, 0]``: loss ``p/3 - p^2/4``;
    - superposition, ``W = [u, -v]``: its loss (closed form but for one 1-D integral, by a midpoint rule
      with ``quadrature`` nodes) minimized over u, v > 0 and both biases by L-BFGS (``iterations``), from
      u = v = 1 and biases -0.2.

    Elhage et al. draw their theoretical diagram by comparing the losses of these configurations;
    optimizing the norms and biases of each, and the numerical method, are ours. Superposition wins a cell
    only if it beats the others by a relative 1e-3 (its loss tends to theirs as u or v -> 0). Returns
    ``(regimes (R, P), losses (3, R, P))`` with losses indexed like :data:`REGIMES`.
    """
    densities = _probabilities("densities", densities)
    importances = _relative_importances(relative_importances)
    quadrature = int_at_least(quadrature, "quadrature", 16)
    iterations = positive_int(iterations, "iterations")
    r, p = torch.meshgrid(importances, densities, indexing="ij")  # (R, P)
    variance = p / 3 - p * p / 4
    nodes = (torch.arange(quadrature, dtype=torch.float64) + 0.5) / quadrature
    scale = torch.minimum(r, torch.ones_like(r)) * variance
    start = torch.tensor([0.0, 0.0, -0.2, -0.2], dtype=torch.float64)  # u = v = 1, biases slightly negative
    params = start.expand(*r.shape, 4).clone().requires_grad_(True)
    best = _minimize_antipodal(params, p, r, nodes, iterations, scale)
    losses = torch.stack([r * variance, best, variance])  # indexed like REGIMES
    regimes = torch.where(losses[0] <= losses[2], NOT_REPRESENTED, DEDICATED)  # the more important one stays
    regimes = torch.where(losses[1] < (1 - 1e-3) * torch.minimum(losses[0], losses[2]), SUPERPOSITION, regimes)
    return regimes.long(), losses.float()


def random_directions(n: int, d: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """``n`` random unit vectors in ``R^d``, one per row: (n, d)."""
    positive_int(n, "n")
    positive_int(d, "d")
    check_generator(generator, optional=False)
    v = torch.randn(n, d, generator=generator)
    return (v / v.norm(dim=1, keepdim=True)).to(device)


@dataclass
class SparseMixture:
    """Data ``x = sum_i h_i v_i + noise`` with known monosemantic directions (Chen et al. 2025).

    ``features`` (F, d): unit ground-truth directions; ``frequencies`` (F,): the probability that each one
    is present in a sample; a present feature gets a coefficient ``h_i ~ U[low, high]``; ``noise`` is the
    standard deviation of isotropic Gaussian noise added to x.
    """

    features: torch.Tensor
    frequencies: torch.Tensor
    low: float = 0.5
    high: float = 1.5
    noise: float = 0.0

    def __post_init__(self):
        if not isinstance(self.features, torch.Tensor) or self.features.dim() != 2 or self.features.shape[0] == 0:
            raise ValueError("features: expected a (n_features >= 1, d) tensor")
        norms = self.features.norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            raise ValueError("features: expected unit-norm rows (use random_directions)")
        self.frequencies = _probabilities("frequencies", self.frequencies, len(self.features)).float()
        number_in(self.low, "low", 0, math.inf, bounds="[)", expected="a finite number >= 0")
        number_in(self.high, "high", 0, math.inf, bounds="[)", expected="a finite number >= 0")
        number_in(self.noise, "noise", 0, math.inf, bounds="[)", expected="a finite standard deviation >= 0")
        if not 0 <= self.low <= self.high:
            raise ValueError(f"low, high: expected 0 <= low <= high, got {self.low}, {self.high}")
        if not self.noise >= 0:
            raise ValueError(f"noise: expected a non-negative standard deviation, got {self.noise!r}")

    @classmethod
    def random(cls, n_features: int, d: int, p_min: float, p_max: float, generator: torch.Generator,
               **kwargs) -> SparseMixture:
        """Random directions with frequencies spread log-uniformly over [p_min, p_max]."""
        if not 0 < p_min <= p_max <= 1:
            raise ValueError(f"p_min, p_max: expected 0 < p_min <= p_max <= 1, got {p_min}, {p_max}")
        features = random_directions(n_features, d, generator)
        u = torch.rand(n_features, generator=generator)
        frequencies = torch.exp(math.log(p_min) + u * (math.log(p_max) - math.log(p_min)))
        return cls(features, frequencies, **kwargs)

    @property
    def n_features(self) -> int:
        return self.features.shape[0]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples: activations x (n, d) and the true coefficients h (n, F)."""
        positive_int(n, "n")
        check_generator(generator, optional=False)
        present = torch.rand(n, self.n_features, generator=generator) < self.frequencies.cpu()  # (n, F)
        h = present * (self.low + (self.high - self.low) * torch.rand(n, self.n_features, generator=generator))
        h = h.to(self.features.device)
        x = h @ self.features  # (n, d)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator).to(x.device)
        return x, h
