"""Image tokenizers by vector quantization.

- :class:`VectorQuantizer`: nearest-code lookup with the straight-through gradient and a commitment
  loss (van den Oord et al. 2017, "Neural Discrete Representation Learning", eq. 3); the codebook
  follows exponential moving averages of the vectors assigned to each code (their appendix A.1), and
  codes that nobody uses are restarted on random encoder outputs, so that none stays dead.
- :class:`VQVAE`: a small convolutional encoder (28x28 -> 7x7), the quantizer, and a decoder back to
  pixels: a 7x7 grid of tokens per Fashion-MNIST image.
- :class:`MultiScaleQuantizer` and :class:`MultiScaleVQVAE`: VAR's residual quantizer (Tian et al. 2024,
  "Visual Autoregressive Modeling", Algorithm 1): the latent map is explained coarse to fine, one
  token map per scale (1x1, 2x2, 3x3, 5x5, 7x7), each quantizing what the coarser ones left over.

Shapes: images (B, 1, H, W) in [0, 1]; latents (B, D, h, w); token maps (B, h, w) of code ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from arlib.validate import describe, float_tensor, int_in_range, is_int, number_in, positive_int

_GRID = 7  # the latent grid side: 28x28 images, downsampled 4 times


def _check_scales(scales) -> tuple[int, ...]:
    """A non-empty, strictly increasing sequence of positive ints, as a tuple."""
    if not isinstance(scales, (tuple, list)) or not scales or not all(is_int(s) and s >= 1 for s in scales) \
            or list(scales) != sorted(set(scales)):
        raise ValueError(f"scales: expected increasing positive ints, got {scales!r}")
    return tuple(int(s) for s in scales)

__all__ = ["nearest_code", "VectorQuantizer", "VQConfig", "VQVAE", "MultiScaleQuantizer", "MultiScaleVQVAE",
           "conv_encoder", "conv_decoder", "check_images"]


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the nearest codebook row (K, D) to each vector of z (N, D), in Euclidean distance:
    argmin_k ||z - e_k||^2 = argmin_k (||e_k||^2 - 2 z . e_k), one matrix product. Both finite and floating
    (NaN would make the argmin arbitrary); the codebook is cast to z's dtype, and holds at least one code."""
    float_tensor(z, "z", dim=2, expected="a (N, D) floating tensor")
    float_tensor(codebook, "codebook", dim=2, finite=False, expected=f"a (K >= 1, {z.shape[1]}) floating tensor")
    if codebook.shape[1] != z.shape[1] or codebook.shape[0] == 0:
        raise ValueError(f"codebook: expected a (K >= 1, {z.shape[1]}) tensor, got {describe(codebook)}")
    if codebook.device != z.device:
        raise ValueError(f"codebook: on {codebook.device}, z on {z.device}: expected one device")
    float_tensor(codebook, "codebook")  # finite (after the device check: the scan reads it)
    codebook = codebook.to(z.dtype)
    distance = codebook.pow(2).sum(1)[None, :] - 2 * z @ codebook.T  # (N, K), up to ||z||^2
    return distance.argmin(dim=1)


class VectorQuantizer(nn.Module):
    """Replace each vector by its nearest code; gradients pass straight through to the encoder.

    ``forward(z)`` with z (B, D, h, w) returns (z_q (B, D, h, w), indices (B, h, w), commitment loss).
    z_q equals the codes in value and z in gradient (``z + (e - z).detach()``). The loss is
    ``beta * ||z - sg(e)||^2`` (the commitment term; the codebook term is replaced by EMA updates). In
    training mode every call updates the codebook (the first call starts the codes on random vectors of
    the batch): each code moves to the decayed running mean of the vectors assigned to it, and a code
    whose running count falls below ``restart_below`` (fewer than one vector a batch, on average) is
    moved onto a random vector of the batch: a dead code brought back to where the data is.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99,
                 restart_below: float = 1.0):
        super().__init__()
        positive_int(num_codes, "num_codes")
        positive_int(dim, "dim")
        number_in(decay, "decay", 0, 1, bounds="()")
        number_in(beta, "beta", 0, math.inf, bounds="[)", expected="a finite number >= 0")
        number_in(restart_below, "restart_below", 0, math.inf, bounds="[)", expected="a finite number >= 0")
        self.num_codes, self.dim, self.beta, self.decay, self.restart_below = num_codes, dim, beta, decay, restart_below
        self.register_buffer("codebook", torch.randn(num_codes, dim) * 0.1)  # (K, D)
        self.register_buffer("ema_count", torch.ones(num_codes))  # (K,)
        self.register_buffer("ema_sum", self.codebook.clone())  # (K, D)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))  # codes set from data yet?
        self.restarts = 0  # codes restarted so far (a count, not saved with the weights)

    def lookup(self, indices: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """Code vectors (B, D, h, w) for indices (B, h, w). ``validate=False`` skips the range check, which
        makes the host wait for an accelerator: for samplers whose ids are in range by construction."""
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long or indices.dim() != 3 or (
                validate and indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes)):
            raise ValueError(f"indices: expected a (B, h, w) tensor of torch.long code ids in [0, {self.num_codes})")
        return rearrange(self.codebook[indices], "b h w d -> b d h w")  # code vectors as D channels

    def forward(self, z: torch.Tensor):
        float_tensor(z, "z", dim=4, expected=f"a (B, {self.dim}, h, w) floating tensor")
        if z.shape[1] != self.dim:
            raise ValueError(f"z: expected (B, {self.dim}, h, w), got {tuple(z.shape)}")
        B, D, h, w = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d")  # (N, D): one vector per position, N = B h w
        if self.training and not bool(self.initialized):
            self._init_from_data(flat.detach())
        indices = nearest_code(flat.detach(), self.codebook)  # (N,)
        if self.training:
            self._ema_update(flat.detach(), indices)
        codes = rearrange(self.codebook[indices], "(b h w) d -> b d h w", b=B, h=h, w=w)  # (N, D) -> (B, D, h, w)
        loss = self.beta * F.mse_loss(z, codes.detach())
        return z + (codes - z).detach(), indices.view(B, h, w), loss

    @torch.no_grad()
    def _init_from_data(self, flat: torch.Tensor) -> None:
        """Start the codes on random vectors of the first training batch (random codes far from the
        data would all be dead at once)."""
        pick = torch.randint(len(flat), (self.num_codes,), device=flat.device)
        self.codebook.copy_(flat[pick] + 1e-3 * torch.randn_like(flat[pick]))
        self.ema_sum.copy_(self.codebook)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        onehot = F.one_hot(indices, self.num_codes).type_as(flat)  # (N, K)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.num_codes * 1e-5) * n  # Laplace smoothing: no division by 0
        self.codebook.copy_(self.ema_sum / count[:, None])
        dead = (self.ema_count < self.restart_below).nonzero().flatten()
        if len(dead):
            pick = torch.randint(len(flat), (len(dead),), device=flat.device)
            self.codebook[dead] = flat[pick]
            self.ema_sum[dead] = flat[pick]
            self.ema_count[dead] = 1.0
            self.restarts += int(len(dead))

    def usage(self, indices: torch.Tensor) -> tuple[float, int]:
        """(perplexity of the code histogram, number of codes used) over code ids of any shape (at least one)."""
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long or indices.numel() == 0 \
                or indices.min() < 0 or indices.max() >= self.num_codes:
            raise ValueError(f"indices: expected a non-empty torch.long tensor of code ids in [0, {self.num_codes})")
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).double()
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        return float(entropy.exp()), int((counts > 0).sum())


class _ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


@dataclass
class VQConfig:
    num_codes: int = 256
    code_dim: int = 32
    width: int = 64
    beta: float = 0.25
    scales: tuple[int, ...] = (1, 2, 3, 5, 7)  # used by the multi-scale tokenizer only

    def __post_init__(self):
        positive_int(self.num_codes, "num_codes")
        positive_int(self.code_dim, "code_dim")
        if not is_int(self.width) or self.width < 2 or self.width % 2:
            raise ValueError(f"width: expected an even int >= 2 (the first layer has width / 2), got {self.width!r}")
        number_in(self.beta, "beta", 0, math.inf, bounds="[)", expected="a finite number >= 0")
        self.scales = _check_scales(self.scales)
        if self.scales[-1] != _GRID:
            raise ValueError(f"scales: the last scale must be the latent grid, {_GRID}, got {self.scales!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def conv_encoder(config: VQConfig) -> nn.Sequential:
    """The tokenizers' encoder: (B, 1, 28, 28) images -> (B, code_dim, 7, 7) latents (two stride-2 convs,
    two residual blocks), sized by ``config`` (a :class:`VQConfig`: ``width``, ``code_dim``)."""
    config = _check_config(config, required=True)
    w = config.width
    return nn.Sequential(  # (B, 1, 28, 28) -> (B, D, 7, 7)
        nn.Conv2d(1, w // 2, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(w // 2, w, 4, stride=2, padding=1), _ResBlock(w), _ResBlock(w), nn.ReLU(),
        nn.Conv2d(w, config.code_dim, 1))


def conv_decoder(config: VQConfig) -> nn.Sequential:
    """The tokenizers' decoder: (B, code_dim, 7, 7) latents -> (B, 1, 28, 28) logits of pixel intensity
    (the mirror of :func:`conv_encoder`)."""
    config = _check_config(config, required=True)
    w = config.width
    return nn.Sequential(  # (B, D, 7, 7) -> (B, 1, 28, 28) logits of pixel intensity
        nn.Conv2d(config.code_dim, w, 3, padding=1), _ResBlock(w), _ResBlock(w), nn.ReLU(),
        nn.ConvTranspose2d(w, w // 2, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(w // 2, 1, 4, stride=2, padding=1))


def _check_config(config, required: bool = False) -> VQConfig:
    if config is None and not required:
        return VQConfig()
    if not isinstance(config, VQConfig):
        raise TypeError(f"config: expected a VQConfig{'' if required else ' or None'}, got {type(config).__name__}")
    return config


def check_images(x) -> torch.Tensor:
    """``x`` if it is a float tensor of images (B, 1, 28, 28), else ``ValueError`` naming ``x``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1:] != (1, 28, 28) or not x.is_floating_point():
        raise ValueError(f"x: expected float images (B, 1, 28, 28) in [0, 1], got {describe(x)}")
    return x


class VQVAE(nn.Module):
    """Encoder, :class:`VectorQuantizer`, decoder: 28x28 images <-> 7x7 grids of code ids.

    ``forward(x)`` returns (reconstruction (B, 1, 28, 28) in [0, 1], indices (B, 7, 7), commitment loss);
    train it on ``mse(reconstruction, x) + commitment``. ``encode`` and ``decode`` are the tokenizer."""

    def __init__(self, config: VQConfig | None = None):
        super().__init__()
        config = _check_config(config)
        self.config = config
        self.encoder, self.decoder = conv_encoder(config), conv_decoder(config)
        self.quantizer = VectorQuantizer(config.num_codes, config.code_dim, config.beta)

    def forward(self, x: torch.Tensor):
        check_images(x)
        z_q, indices, loss = self.quantizer(self.encoder(x))
        return torch.sigmoid(self.decoder(z_q)), indices, loss

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token grids (B, 7, 7) of images x (B, 1, 28, 28)."""
        check_images(x)
        return self.quantizer(self.encoder(x))[1]

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) in [0, 1] from token grids (B, 7, 7)."""
        if not isinstance(indices, torch.Tensor) or indices.dim() != 3 or indices.shape[1:] != (_GRID, _GRID):
            raise ValueError(f"indices: expected (B, {_GRID}, {_GRID}) grids of code ids, got {describe(indices)}")
        return torch.sigmoid(self.decoder(self.quantizer.lookup(indices)))


class MultiScaleQuantizer(nn.Module):
    """VAR's residual quantizer over scales s_1 < ... < s_K = h (Tian et al. 2024, Algorithm 1).

    For each scale: area-downsample the residual to s x s, take nearest codes (one shared codebook),
    upsample the code map back to h x h (bicubic), refine it with ``phi(u) = 0.5 u + 0.5 conv3x3(u)``
    (one conv per scale), add it to the reconstruction f_hat and subtract it from the residual. The
    straight-through estimator is applied per scale, so the encoder and every phi get gradients.
    ``forward(f)`` returns (f_hat (B, D, h, h), list of K token maps (B, s_k, s_k), commitment loss).
    """

    def __init__(self, num_codes: int, dim: int, scales=(1, 2, 3, 5, 7), beta: float = 0.25):
        super().__init__()
        self.scales = scales = _check_scales(scales)
        self.vq = VectorQuantizer(num_codes, dim, beta)
        self.phi = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in scales)

    def _refine(self, k: int, codes: torch.Tensor, size: int) -> torch.Tensor:
        up = codes if codes.shape[-1] == size else F.interpolate(codes, size=(size, size), mode="bicubic")
        return 0.5 * up + 0.5 * self.phi[k](up)

    def forward(self, f: torch.Tensor):
        float_tensor(f, "f", dim=4, finite=False, expected=f"(B, D, {self.scales[-1]}, {self.scales[-1]}) latents")
        if f.dim() != 4 or f.shape[-1] != self.scales[-1] or f.shape[-2] != self.scales[-1]:
            raise ValueError(f"f: expected (B, D, {self.scales[-1]}, {self.scales[-1]}), got {tuple(f.shape)}")
        size = f.shape[-1]
        residual, f_hat, maps, loss = f, torch.zeros_like(f), [], f.new_zeros(())
        for k, s in enumerate(self.scales):
            r = residual if s == size else F.interpolate(residual, size=(s, s), mode="area")  # (B, D, s, s)
            codes, indices, commit = self.vq(r)
            h = self._refine(k, codes, size)
            f_hat, residual = f_hat + h, residual - h
            maps.append(indices)
            loss = loss + commit
        return f_hat, maps, loss / len(self.scales)

    def reconstruct(self, maps: list[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        """f_hat (B, D, h, h) from the first ``upto`` token maps (all by default)."""
        upto = len(self.scales) if upto is None else int_in_range(upto, "upto", 0, len(self.scales))
        if not isinstance(maps, (list, tuple)) or len(maps) < upto:
            raise ValueError(f"maps: expected a list of at least {upto} token maps of scales {self.scales[:upto]}")
        if len({m.shape[0] if isinstance(m, torch.Tensor) and m.dim() else -1 for m in maps[:upto]}) > 1:
            raise ValueError(f"maps: expected maps of one batch size, got {[describe(m) for m in maps[:upto]]}")
        size = self.scales[-1]
        B = maps[0].shape[0] if maps else 1
        f_hat = self.vq.codebook.new_zeros(B, self.vq.dim, size, size)
        for k in range(upto):
            if maps[k].shape[-2:] != (self.scales[k], self.scales[k]):
                raise ValueError(f"maps: map {k} should be {self.scales[k]}x{self.scales[k]}, "
                                 f"got {tuple(maps[k].shape)}")
            f_hat = self.add_scale(f_hat, k, maps[k])
        return f_hat

    def add_scale(self, f_hat: torch.Tensor, k: int, indices: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """The reconstruction f_hat (B, D, h, h) plus map k (B, s_k, s_k), upsampled and refined by phi_k
        (``validate`` as in :meth:`VectorQuantizer.lookup`)."""
        int_in_range(k, "k", 0, len(self.scales) - 1)
        size, s = self.scales[-1], self.scales[k]
        if not isinstance(indices, torch.Tensor) or indices.dim() != 3 or indices.shape[1:] != (s, s):
            raise ValueError(f"indices: expected a (B, {s}, {s}) map of code ids for scale {k}, "
                             f"got {describe(indices)}")
        if not isinstance(f_hat, torch.Tensor) or not f_hat.is_floating_point() \
                or f_hat.shape != (indices.shape[0], self.vq.dim, size, size):
            raise ValueError(f"f_hat: expected a ({indices.shape[0]}, {self.vq.dim}, {size}, {size}) reconstruction, "
                             f"got {describe(f_hat)}")
        return f_hat + self._refine(k, self.vq.lookup(indices, validate), self.scales[-1])

    def next_scale_step(self, f_hat: torch.Tensor, k: int, indices: torch.Tensor,
                        validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Add map k (B, s_k, s_k) to the reconstruction f_hat (B, D, h, h); return (the new f_hat, the next
        scale's input: f_hat area-downsampled to scale k+1 as (B, s_(k+1)^2, D) token features). The one step
        that both teacher forcing and sampling of a next-scale model take (VAR, section 3.2)."""
        int_in_range(k, "k", 0, len(self.scales) - 2, expected=f"a scale index in [0, {len(self.scales) - 1})")
        f_hat = self.add_scale(f_hat, k, indices, validate)
        s = self.scales[k + 1]
        x = f_hat if s == self.scales[-1] else F.interpolate(f_hat, size=(s, s), mode="area")
        return f_hat, rearrange(x, "b d h w -> b (h w) d")  # scale map (B, D, s, s) -> s^2 tokens in raster order

    def next_scale_inputs(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Teacher-forcing inputs of a next-scale model: for k = 1..K-1, the reconstruction from maps
        1..k area-downsampled to scale k+1, as (B, s_(k+1)^2, D) token features; maps: the token maps of
        (at least) the first K - 1 scales."""
        if not isinstance(maps, (list, tuple)) or len(maps) < len(self.scales) - 1 or not maps:
            raise ValueError(f"maps: expected a list of the token maps of scales {self.scales}")
        if not isinstance(maps[0], torch.Tensor) or maps[0].dim() != 3:
            raise ValueError(f"maps: expected (B, s, s) token maps, got {describe(maps[0])}")
        size = self.scales[-1]
        f_hat = self.vq.codebook.new_zeros(maps[0].shape[0], self.vq.dim, size, size)
        inputs = []
        for k in range(len(self.scales) - 1):
            f_hat, x = self.next_scale_step(f_hat, k, maps[k])
            inputs.append(x)
        return inputs


class MultiScaleVQVAE(nn.Module):
    """The same encoder and decoder as :class:`VQVAE` around a :class:`MultiScaleQuantizer`:
    ``forward(x)`` -> (reconstruction, token maps per scale, commitment loss)."""

    def __init__(self, config: VQConfig | None = None):
        super().__init__()
        config = _check_config(config)
        self.config = config
        self.encoder, self.decoder = conv_encoder(config), conv_decoder(config)
        self.quantizer = MultiScaleQuantizer(config.num_codes, config.code_dim, config.scales, config.beta)

    def forward(self, x: torch.Tensor):
        check_images(x)
        f_hat, maps, loss = self.quantizer(self.encoder(x))
        return torch.sigmoid(self.decoder(f_hat)), maps, loss

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token maps [(B, 1, 1), (B, 2, 2), ..., (B, 7, 7)] of images x (B, 1, 28, 28)."""
        check_images(x)
        return self.quantizer(self.encoder(x))[1]

    @torch.no_grad()
    def decode(self, maps: list[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        """Images (B, 1, 28, 28) from the first ``upto`` token maps (all by default): coarse to fine."""
        return self.decode_latent(self.quantizer.reconstruct(maps, upto))

    @torch.no_grad()
    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) from a reconstruction f_hat (B, D, h, h), e.g. the one a next-scale
        sampler builds as it goes (:func:`arlib.vision.generators.sample_next_scale` with ``return_latent=True``)."""
        D, h = self.config.code_dim, self.quantizer.scales[-1]
        if not isinstance(f_hat, torch.Tensor) or f_hat.dim() != 4 or tuple(f_hat.shape[1:]) != (D, h, h):
            got = tuple(f_hat.shape) if isinstance(f_hat, torch.Tensor) else type(f_hat).__name__
            raise ValueError(f"f_hat: expected a (B, {D}, {h}, {h}) latent map, got {got}")
        return torch.sigmoid(self.decoder(f_hat))
