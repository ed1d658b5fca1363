"""Superposition and data with known features: the toy model of Elhage et al. (2022) and the sparse
mixtures of monosemantic directions on which sparse autoencoders can be scored (Chen et al. 2025).

- :class:`ToyModel`: ``h = W x`` squeezes ``n`` sparse features into ``m < n`` dimensions and
  ``x' = ReLU(W^T h + b)`` reads them back (Elhage et al. 2022: their "ReLU output model"),
  trained with the importance-weighted squared error. Several instances (one per sparsity) train at once.
- :func:`toy_batch`: features ``x_i ~ U[0, 1]`` with probability ``p``, else 0.
- :func:`feature_dimensionality`: Elhage et al.'s ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2``, the
  fraction of a dimension that feature ``i`` owns.
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

from arlib.validate import float_tensor, is_int, number_in, positive_int
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
    importance: one finite weight >= 0 per feature."""
    if not isinstance(model, ToyModel):
        raise TypeError(f"model: expected a ToyModel, got {type(model).__name__}")
    float_tensor(x, "x", dim=3, finite=False, expected="a (batch, instances, features) floating tensor")
    try:
        importance = torch.as_tensor(importance, dtype=x.dtype, device=x.device)
    except (TypeError, ValueError, RuntimeError):
        importance = None
    if importance is None or importance.dim() != 1 or importance.numel() != x.shape[-1] \
            or not bool((torch.isfinite(importance) & (importance >= 0)).all()):
        raise ValueError(f"importance: expected {x.shape[-1]} finite non-negative weights, one per feature")
    return (importance * (x - model(x)) ** 2).sum(dim=(1, 2)).mean()


def train_toy_model(n_features: int, n_hidden: int, p, importance, steps: int = 3000, batch_size: int = 1024,
                    lr: float = 1e-3, seed: int = 0, device=None) -> ToyModel:
    """Train one toy model per entry of ``p`` (in parallel, one instance each) with Adam, as the paper does."""
    p = _probabilities("p", p)
    number_in(lr, "lr", 0, math.inf, bounds="()", expected="a finite learning rate > 0")
    if not is_int(seed):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    positive_int(steps, "steps")
    generator = torch.Generator().manual_seed(seed)
    model = ToyModel(n_features, n_hidden, len(p), generator).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    importance = torch.as_tensor(importance, dtype=torch.float32, device=device)
    for _ in range(positive_int(steps, "steps")):
        x = toy_batch(batch_size, n_features, p, generator, len(p), device)
        loss = toy_loss(model, x, importance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
