"""Finite scalar quantization (FSQ, Mentzer et al. 2024, "Finite Scalar Quantization: VQ-VAE Made Simple").

No codebook: a latent vector of d channels is bounded channel by channel to a few levels and rounded.
Channel i takes L_i values, so the implicit codebook is the grid of prod(L_i) points, and a code's id is
the mixed-radix number of its digits. Nothing is learned in the quantizer, so there is nothing to keep
alive: no commitment loss, no EMA, no restarts, and (in the paper's measurements) close to every code used.

- :class:`FiniteScalarQuantizer`: bound (``f(z) = floor(L/2) tanh(z)``, with a half-step shift when L is
  even, the paper's section 3 and appendix A.1), round with the straight-through gradient, scale to [-1, 1];
- :class:`FSQVAE`: the book's encoder and decoder (:func:`arlib.vision.vq.conv_encoder`) around it, with
  1x1 convolutions from the encoder's channels to the d quantized ones and back.

The paper recommends the levels (8, 6, 5) for a codebook of about 2^8 (240 codes) and (8, 5, 5, 5) for
2^10 (its table 1); the book's VQ-VAE has 256 codes, so (8, 6, 5) is the matched choice.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from arlib.validate import describe, float_tensor, is_int, positive_int
from arlib.vision.vq import VQConfig, check_images, conv_decoder, conv_encoder

__all__ = ["FiniteScalarQuantizer", "FSQVAE"]

_GRID = 7  # the latent grid of the book's tokenizers


def _check_levels(levels) -> tuple[int, ...]:
    if not isinstance(levels, (tuple, list)) or not levels or not all(is_int(v) and v >= 3 for v in levels):
        # L = 2 would need a shift of atanh(> 1): the paper's levels are all >= 5
        raise ValueError(f"levels: expected a non-empty sequence of ints >= 3 (values per channel), got {levels!r}")
    return tuple(int(v) for v in levels)


class FiniteScalarQuantizer(nn.Module):
    """Quantize each of d = len(levels) channels to its own number of levels.

    ``forward(z)`` with z (B, d, h, w) returns (z_q (B, d, h, w) with values in [-1, 1], indices (B, h, w),
    a zero loss) so that it drops in where :class:`arlib.vision.vq.VectorQuantizer` was. Channel i of z_q
    takes the L_i values ``(j - floor(L_i / 2)) / floor(L_i / 2)`` for j = 0..L_i-1; the gradient of the
    rounding is passed straight through (``z + (round(z) - z).detach()``)."""

    def __init__(self, levels=(8, 6, 5), eps: float = 1e-3):
        super().__init__()
        self.levels = _check_levels(levels)
        self.dim, self.num_codes = len(self.levels), math.prod(self.levels)
        L = torch.tensor(self.levels, dtype=torch.float64)
        half_l = (L - 1) * (1 - eps) / 2  # just inside the outermost levels: tanh never reaches them
        offset = torch.where(L % 2 == 0, 0.5, 0.0)  # even L: the grid is shifted by half a step
        self.register_buffer("half_l", half_l.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_l).float(), persistent=False)  # f(0) = 0
        self.register_buffer("half_width", (L // 2).float(), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1]), 0)  # mixed-radix place values
        self.register_buffer("basis", basis, persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """``tanh(z + shift) half_l - offset`` per channel: into (-L/2, L/2) for odd L, shifted for even L,
        so that rounding gives exactly L integers. z (..., d)."""
        return torch.tanh(z + self.shift) * self.half_l - self.offset

    def _quantize_last(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> quantized values in [-1, 1] (..., d), straight-through."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self.half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (...,) of quantized vectors (..., d) with values on the grid."""
        digits = torch.round(codes * self.half_width + self.half_width).long()  # each channel in [0, L_i)
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized vectors (..., d) of code ids (...,) in [0, num_codes)."""
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long or (
                indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes)):
            raise ValueError(f"indices: expected a torch.long tensor of code ids in [0, {self.num_codes})")
        levels = torch.tensor(self.levels, device=indices.device)
        digits = (indices[..., None] // self.basis) % levels  # (..., d)
        return (digits.float() - self.half_width) / self.half_width

    def forward(self, z: torch.Tensor):
        float_tensor(z, "z", dim=4, expected=f"a (B, {self.dim}, h, w) floating tensor")
        if z.shape[1] != self.dim:
            raise ValueError(f"z: expected (B, {self.dim}, h, w) (one channel per level), got {tuple(z.shape)}")
        codes = self._quantize_last(rearrange(z, "b d h w -> b h w d"))  # (B, h, w, d)
        return rearrange(codes, "b h w d -> b d h w"), self.codes_to_indices(codes.detach()), z.new_zeros(())

    def usage(self, indices: torch.Tensor) -> tuple[float, int]:
        """(perplexity of the code histogram, number of codes used) over code ids of any shape (at least one)."""
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long or indices.numel() == 0 \
                or indices.min() < 0 or indices.max() >= self.num_codes:
            raise ValueError(f"indices: expected a non-empty torch.long tensor of code ids in [0, {self.num_codes})")
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).double()
        probs = counts[counts > 0] / counts.sum()
        return float((-(probs * probs.log()).sum()).exp()), int((counts > 0).sum())


class FSQVAE(nn.Module):
    """The VQ-VAE's encoder and decoder around a :class:`FiniteScalarQuantizer`: 28x28 images <-> 7x7 grids
    of ``prod(levels)`` code ids. ``forward(x)`` returns (reconstruction (B, 1, 28, 28) in [0, 1], indices
    (B, 7, 7), a zero loss); train on ``mse(reconstruction, x)``. ``encode`` and ``decode`` as VQVAE's."""

    def __init__(self, levels=(8, 6, 5), code_dim: int = 32, width: int = 64):
        super().__init__()
        self.quantizer = FiniteScalarQuantizer(levels)
        positive_int(code_dim, "code_dim")
        self.config = VQConfig(num_codes=self.quantizer.num_codes, code_dim=code_dim, width=width)
        self.encoder, self.decoder = conv_encoder(self.config), conv_decoder(self.config)
        self.project_in = nn.Conv2d(code_dim, self.quantizer.dim, 1)  # D channels -> d quantized ones
        self.project_out = nn.Conv2d(self.quantizer.dim, code_dim, 1)

    def forward(self, x: torch.Tensor):
        check_images(x)
        z_q, indices, loss = self.quantizer(self.project_in(self.encoder(x)))
        return torch.sigmoid(self.decoder(self.project_out(z_q))), indices, loss

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token grids (B, 7, 7) of images x (B, 1, 28, 28)."""
        return self(x)[1]

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) in [0, 1] from token grids (B, 7, 7)."""
        if not isinstance(indices, torch.Tensor) or indices.dim() != 3 or indices.shape[1:] != (_GRID, _GRID):
            raise ValueError(f"indices: expected (B, {_GRID}, {_GRID}) grids of code ids, got {describe(indices)}")
        codes = rearrange(self.quantizer.indices_to_codes(indices), "b h w d -> b d h w")
        return torch.sigmoid(self.decoder(self.project_out(codes)))
