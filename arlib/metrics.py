"""Evaluation metrics: for image generators (chapter 4) a Fashion-MNIST classifier and the Fréchet
distance; for speech recognizers (chapter 5) the edit distance, word and character error rates.

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

__all__ = ["frechet_distance", "gaussian_frechet", "FashionClassifier", "edit_distance", "word_error_rate",
           "char_error_rate"]


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


# -- speech recognition: edit distance, word and character error rates ----------------------------------


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance between two sequences: the fewest substitutions, insertions and deletions
    that turn ``reference`` into ``hypothesis`` (dynamic programming, one row at a time)."""
    ref, hyp = list(reference), list(hypothesis)
    row = list(range(len(hyp) + 1))  # distances from ref[:0] to each prefix of hyp
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def _error_rate(references, hypotheses, split) -> float:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references, hypotheses: expected lists of strings, got a string")
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"references, hypotheses: expected equally long non-empty lists, got "
                         f"{len(references)} and {len(hypotheses)}")
    errors = sum(edit_distance(split(r), split(h)) for r, h in zip(references, hypotheses))
    total = sum(len(split(r)) for r in references)
    if total == 0:
        raise ValueError("references: expected at least one word or character to score against")
    return errors / total


def word_error_rate(references, hypotheses) -> float:
    """WER: word edit distance summed over the corpus / reference words (can exceed 1)."""
    return _error_rate(references, hypotheses, str.split)


def char_error_rate(references, hypotheses) -> float:
    """CER: character edit distance summed over the corpus / reference characters."""
    return _error_rate(references, hypotheses, list)
