"""Image-generator metrics (chapter 4): a Fashion-MNIST classifier and the Fréchet distance.

The Fréchet distance between Gaussians fitted to two sets of features (Heusel et al. 2017, "GANs
Trained by a Two Time-Scale Update Rule", the FID) is

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2)),

computed here in float64 with symmetric eigendecompositions (the matrix inside the square root is
symmetric positive semi-definite, so no general ``sqrtm`` is needed). The features come from the
penultimate layer of :class:`FashionClassifier`, a small CNN trained by the recipe
``fashion-classifier``; the same network's predictions measure whether class-conditional samples show
the class they were asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["frechet_distance", "gaussian_frechet", "FashionClassifier"]


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues clipped)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def gaussian_frechet(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """The Fréchet (2-Wasserstein squared) distance between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    mu_a, cov_a, mu_b, cov_b = (t.double() for t in (mu_a, cov_a, mu_b, cov_b))
    d = mu_a.shape[0]
    for name, cov in (("cov_a", cov_a), ("cov_b", cov_b)):
        if cov.shape != (d, d):
            raise ValueError(f"{name}: expected a ({d}, {d}) covariance, got {tuple(cov.shape)}")
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross)
    return float(value.clamp_min(0))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features (N, d) and (M, d) (unbiased covariances)."""
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name}: expected a (N >= 2, d) tensor of features")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_b: expected {features_a.shape[1]} features per row, got {features_b.shape[1]}")
    a, b = features_a.double(), features_b.double()
    return gaussian_frechet(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


class FashionClassifier(nn.Module):
    """Two conv blocks and a 64-unit feature layer: ``forward`` gives logits (B, 10), ``features`` the
    64 features (B, 64) that the Fréchet distance compares. Input (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, width: int = 32, features: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 7 * 7, features)
        self.out = nn.Linear(features, 10)
        self.dropout = nn.Dropout(0.2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"x: expected images (B, 1, 28, 28), got {tuple(x.shape)}")
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, w, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 2w, 7, 7)
        return F.relu(self.fc(x.flatten(1)))  # (B, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))
