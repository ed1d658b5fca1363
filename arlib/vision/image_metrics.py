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

from arlib.validate import describe, float_tensor, positive_int

__all__ = ["frechet_distance", "gaussian_frechet", "FashionClassifier"]


PSD_TOLERANCE = 1e-6  # relative to the largest |entry|: asymmetry and negative eigenvalues allowed in a covariance


def _eigh(matrix: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        values, vectors = torch.linalg.eigh(matrix)
    except torch.linalg.LinAlgError as exc:  # only for matrices whose entries overflow float64 in the solver
        raise ValueError(f"{name}: the eigendecomposition failed ({exc}); are its entries too large?") from None
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name}: the eigendecomposition overflowed float64; are its entries too large?")
    return values, vectors


def _psd_sqrt(matrix: torch.Tensor, name: str) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues within the tolerance,
    rounding errors, clipped to 0)."""
    values, vectors = _eigh(matrix, name)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def _check_covariance(cov, name: str, d: int) -> torch.Tensor:
    """cov (d, d) finite, symmetric and positive semi-definite within PSD_TOLERANCE, as float64."""
    cov = float_tensor(cov, name, dim=2, expected=f"a ({d}, {d}) floating covariance").double()
    if cov.shape != (d, d):
        raise ValueError(f"{name}: expected a ({d}, {d}) covariance, got {tuple(cov.shape)}")
    if d == 0:
        return cov
    scale = float(cov.abs().max().clamp_min(1e-300))
    if float((cov - cov.T).abs().max()) > PSD_TOLERANCE * scale:
        raise ValueError(f"{name}: a covariance must be symmetric (within {PSD_TOLERANCE:g} of its largest entry)")
    lowest = float(_eigh(cov, name)[0].min())
    if lowest < -PSD_TOLERANCE * scale:
        raise ValueError(f"{name}: a covariance must be positive semi-definite, found the eigenvalue {lowest:.3g} "
                         f"(tolerance {PSD_TOLERANCE:g} of its largest entry)")
    return (cov + cov.T) / 2


def gaussian_frechet(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """The Fréchet (2-Wasserstein squared) distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    mu (d,) and cov (d, d) finite floating tensors; each covariance must be symmetric and positive
    semi-definite within ``PSD_TOLERANCE`` (1e-6) of its largest entry, else ``ValueError`` naming it:
    eigenvalues that negative come from a bug, not from rounding. Smaller negative eigenvalues (rounding)
    count as 0."""
    mu_a = float_tensor(mu_a, "mu_a", dim=1, expected="a (d,) floating mean").double()
    d = mu_a.shape[0]
    mu_b = float_tensor(mu_b, "mu_b", dim=1, expected=f"a ({d},) floating mean").double()
    if mu_b.shape != (d,):
        raise ValueError(f"mu_b: expected a ({d},) mean like mu_a, got {describe(mu_b)}")
    cov_a, cov_b = _check_covariance(cov_a, "cov_a", d), _check_covariance(cov_b, "cov_b", d)
    for name, t in (("cov_a", cov_a), ("mu_b", mu_b), ("cov_b", cov_b)):
        if t.device != mu_a.device:
            raise ValueError(f"{name}: on {t.device}, mu_a on {mu_a.device}: expected one device")
    root_a = _psd_sqrt(cov_a, "cov_a")
    cross = _psd_sqrt(root_a @ cov_b @ root_a, "cov_b")
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross)
    if not bool(torch.isfinite(value)):
        raise ValueError("cov_a, cov_b: the distance overflowed float64; are their entries too large?")
    return float(value.clamp_min(0))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features (N, d) and (M, d) (unbiased covariances);
    finite real features (integers are converted)."""
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] < 2 or f.dtype == torch.bool \
                or f.is_complex():
            raise ValueError(f"{name}: expected a (N >= 2, d) tensor of real features, got {describe(f)}")
        float_tensor(f.double(), name)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_b: expected {features_a.shape[1]} features per row, got {features_b.shape[1]}")
    a, b = features_a.double(), features_b.double()
    return gaussian_frechet(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


class FashionClassifier(nn.Module):
    """Two conv blocks and a 64-unit feature layer: ``forward`` gives logits (B, 10), ``features`` the
    64 features (B, 64) that the Fréchet distance compares. Input (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, width: int = 32, features: int = 64):
        super().__init__()
        positive_int(width, "width")
        positive_int(features, "features")
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 7 * 7, features)
        self.out = nn.Linear(features, 10)
        self.dropout = nn.Dropout(0.2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"x: expected float images (B, 1, 28, 28) in [0, 1], got {describe(x)}")
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, w, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 2w, 7, 7)
        return F.relu(self.fc(x.flatten(1)))  # (B, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))
