"""Sparse autoencoders (SAEs): the model, its activations and the metrics that score it.

One architecture serves every training method of :mod:`arlib.interp.sae_train` and ``arlib.interp.jumprelu``:

    f = sigma((x - b_dec) W_enc + b_enc),      x_hat = f W_dec + b_dec

- ``activation="relu"``: sigma = ReLU, trained with an L1 penalty weighted by the decoder norms, the form of
  Anthropic's April 2024 training update (Conerly et al. 2024; Bricken et al. 2023 used a plain L1 with
  unit-norm decoder rows and resampling). The norms make the penalty blind to rescaling a latent, see
  :func:`l1_penalty`;
- ``activation="topk"``: sigma keeps the k largest pre-activations (then a ReLU) and zeroes the rest
  (Gao et al. 2025, their TopK activation), so every input uses at most k latents by construction;
- ``activation="jump"``: the JumpReLU form f_i = z_i 1[z_i > theta_i] with z = (x - b_dec) W_enc and the
  threshold theta = -b_enc: a latent either stays silent or passes its whole drive z_i, so a high threshold
  does not shrink what it passes. Bias adaptation (Chen et al. 2025) trains it: its sparsity comes from the
  encoder biases, which :class:`arlib.interp.sae_train.BiasAdaptation` sets instead of gradient descent. (With a
  plain ReLU the adapted bias would also be subtracted from every active latent; in our runs that shrinkage
  kept the reconstruction from improving, so the gate is our choice, not necessarily the paper's.)
- ``activation="jumprelu"``: the JumpReLU SAE as published (Rajamanoharan et al. 2024):
  f_i = z_i H(z_i - theta_i) with z = (x - b_dec) W_enc + b_enc (the bias *is* learned) and a separate learned
  threshold theta_i > 0 per latent, stored as ``log_threshold`` (M,). The step has no useful gradient, so
  training goes through the straight-through estimators of ``arlib.interp.jumprelu``, which also trains
  the L0 penalty directly (its ``JumpReLUObjective``).

``unit_decoder=True`` constrains the decoder rows (one dictionary direction per latent) to unit norm
by construction: the forward pass divides each row by its norm, so no optimizer step can break it.

Metrics: :func:`normalized_mse`, :func:`l0`, :func:`firing_frequencies`, :func:`mmcs` and
:func:`fraction_recovered` (recovery of known ground-truth features), and the loss increase of a GPT
when the SAE's reconstruction replaces its residual stream (:func:`spliced_logits`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from arlib.validate import describe, float_tensor, int_in_range, number_in, positive_int

ACTIVATIONS = ("relu", "topk", "jump", "jumprelu")
JUMPRELU_INIT_THRESHOLD = 0.001  # theta at initialization (the paper's value, for inputs of unit mean squared norm)


@dataclass
class SAEConfig:
    d_in: int  # width of the activations x
    n_latents: int  # dictionary size M
    activation: str = "relu"  # "relu", "topk", "jump" or "jumprelu"
    k: int | None = None  # latents kept per input ("topk" only)
    unit_decoder: bool = False  # decoder rows constrained to unit norm

    def __post_init__(self):
        for name in ("d_in", "n_latents"):
            positive_int(getattr(self, name), name)
        if not isinstance(self.unit_decoder, bool):
            raise ValueError(f"unit_decoder: expected a bool, got {self.unit_decoder!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "topk":
            int_in_range(self.k, "k", 1, self.n_latents, expected=f"an int in [1, n_latents={self.n_latents}] for topk")
        elif self.k is not None:
            raise ValueError(f"k: only the topk activation takes k, got k={self.k!r} with {self.activation!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each row of ``pre`` (N, M), then a ReLU; zeros elsewhere.

    Gao et al. (2025): z = ReLU(TopK(W_enc (x - b_pre))), with b_pre our b_dec. At most k entries of a row are non-zero.
    """
    float_tensor(pre, "pre", finite=False, expected="a floating tensor of pre-activations (..., M)")
    if pre.dim() < 1:
        raise ValueError("pre: expected a tensor of pre-activations (..., M)")
    int_in_range(k, "k", 1, pre.shape[-1])
    values, indices = pre.topk(k, dim=-1)  # (..., k)
    return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))


def jump_activation(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``f_i = z_i`` where ``z_i + b_i > 0`` and ``z_i > 0``, else 0 (JumpReLU with threshold ``max(-b_i, 0)``):
    z (..., M) the bias-free pre-activations, bias (M,). Gradients reach z (and the encoder), not the bias."""
    float_tensor(z, "z", finite=False, expected="a floating tensor of pre-activations (..., M)")
    float_tensor(bias, "bias", dim=1, finite=False, expected="a (M,) floating tensor")
    if z.shape[-1:] != bias.shape:
        raise ValueError(f"bias: expected shape ({z.shape[-1]},), got {tuple(bias.shape)}")
    return F.relu(z) * ((z + bias) > 0)


class SparseAutoencoder(nn.Module):
    """``f = sigma((x - b_dec) W_enc + b_enc)``, ``x_hat = f W_dec + b_dec``; see the module docstring."""

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(config, SAEConfig):
            raise TypeError(f"config: expected SAEConfig, got {type(config).__name__}")
        self.config = config
        d, M = config.d_in, config.n_latents
        directions = torch.randn(M, d, generator=generator)
        directions /= directions.norm(dim=1, keepdim=True)
        # Decoder rows start as random unit vectors, the encoder as their transpose (as Gao et al. 2025 do).
        self.W_dec = nn.Parameter(directions.clone())  # (M, d)
        self.W_enc = nn.Parameter(directions.T.clone())  # (d, M)
        self.b_enc = nn.Parameter(torch.zeros(M))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if config.activation == "jumprelu":  # only then: the state dicts of the other activations are unchanged
            self.log_threshold = nn.Parameter(torch.full((M,), math.log(JUMPRELU_INIT_THRESHOLD)))  # (M,) log theta

    @property
    def decoder(self) -> torch.Tensor:
        """The dictionary (M, d) as the forward pass uses it: rows divided by their norms if unit_decoder."""
        if self.config.unit_decoder:
            return self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return self.W_dec

    @property
    def threshold(self) -> torch.Tensor:
        """The JumpReLU thresholds theta = exp(log_threshold) (M,), all > 0 ("jumprelu" SAEs only)."""
        if self.config.activation != "jumprelu":
            raise AttributeError(f"threshold: only a jumprelu SAE has one, this one is {self.config.activation!r}")
        return self.log_threshold.exp()

    def _check(self, x: torch.Tensor) -> None:
        """x (..., d_in): finite floating activations (one scan per call; NaN would spread silently)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 \
                or x.shape[-1] != self.config.d_in:
            raise ValueError(f"x: expected floating activations (..., {self.config.d_in}), got {describe(x)}")
        float_tensor(x, "x")

    def pre_activations(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """(x - b_dec) W_enc (+ b_enc): (..., d) -> (..., M)."""
        self._check(x)
        pre = (x - self.b_dec) @ self.W_enc
        return pre + self.b_enc if bias else pre

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations f (..., M)."""
        if self.config.activation == "jump":
            return jump_activation(self.pre_activations(x, bias=False), self.b_enc)
        if self.config.activation == "jumprelu":
            # z H(z - theta), plainly: its true derivative in theta is zero; training goes through the
            # straight-through estimators of arlib.interp.jumprelu (JumpReLUObjective), not through encode
            z = self.pre_activations(x)  # (..., M)
            return z * (z > self.threshold).to(z.dtype)
        pre = self.pre_activations(x)
        return topk_activation(pre, self.config.k) if self.config.activation == "topk" else F.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction x_hat (..., d) of latents f (..., M)."""
        if not isinstance(f, torch.Tensor) or not f.is_floating_point() or f.dim() < 1 \
                or f.shape[-1] != self.config.n_latents:
            raise ValueError(f"f: expected floating latents (..., {self.config.n_latents}), got {describe(f)}")
        return f @ self.decoder + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat (..., d), f (..., M))."""
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def init_decoder_bias(self, x: torch.Tensor) -> None:
        """Start b_dec at the mean of a sample of activations x (N, d), so the encoder sees centred inputs."""
        self._check(x)
        if x.numel() == 0:
            raise ValueError("x: expected at least one activation vector")
        self.b_dec.copy_(x.reshape(-1, self.config.d_in).mean(0))


# --- losses -----------------------------------------------------------------------------------------------


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error ``||x - x_hat||^2`` summed over the features, averaged over the inputs."""
    float_tensor(x, "x", finite=False)
    float_tensor(x_hat, "x_hat", finite=False)
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat: expected the shape of x {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    return (x - x_hat).pow(2).sum(-1).mean()


def l1_penalty(f: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    """``sum_i f_i ||W_dec,i||`` averaged over the inputs (f (N, M), decoder (M, d)): the decoder-norm-weighted L1
    of Anthropic's April 2024 update (Conerly et al. 2024), not the plain L1 of Bricken et al. 2023.

    Scaling latent i's encoder by c and its decoder row by 1/c leaves x_hat unchanged; with the norms the
    penalty is unchanged too, without them it could be driven to zero by shrinking f and growing W_dec.
    """
    float_tensor(f, "f", finite=False, expected="floating latents (..., M)")
    float_tensor(decoder, "decoder", dim=2, finite=False, expected="a (M, d) floating dictionary")
    if f.dim() < 1 or f.shape[-1] != decoder.shape[0]:
        raise ValueError(f"decoder: expected {f.shape[-1]} rows, one per latent, got {decoder.shape[0]}")
    return (f * decoder.norm(dim=1)).sum(-1).mean()


# --- metrics ----------------------------------------------------------------------------------------------


def normalized_mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``: 0 is perfect, 1 is no better than the mean."""
    if x.shape != x_hat.shape or x.dim() != 2 or len(x) < 2:
        raise ValueError(f"x, x_hat: expected two (N >= 2, d) tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(x_hat.shape)}")
    float_tensor(x, "x")
    float_tensor(x_hat, "x_hat")
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30))


def _check_latents(f) -> torch.Tensor:
    if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] == 0:
        raise ValueError(f"f: expected latents (N >= 1, M), got {describe(f)}")
    return f


def l0(f: torch.Tensor) -> float:
    """Mean number of non-zero latents per input (f (N >= 1, M))."""
    _check_latents(f)
    return float((f != 0).sum(1).double().mean())


def firing_frequencies(f: torch.Tensor) -> torch.Tensor:
    """The fraction of inputs on which each latent is non-zero: (N >= 1, M) -> (M,)."""
    _check_latents(f)
    return (f != 0).double().mean(0)


def dead_and_dense(frequencies: torch.Tensor, dense_above: float = 0.1) -> tuple[int, int]:
    """(latents that never fired, latents that fired on more than ``dense_above`` of the inputs)."""
    number_in(dense_above, "dense_above", 0, 1, bounds="()", expected="a fraction in (0, 1)")
    float_tensor(frequencies, "frequencies", dim=1, expected="a (M,) tensor of firing frequencies")
    if bool(((frequencies < 0) | (frequencies > 1)).any()):
        raise ValueError("frequencies: expected firing frequencies in [0, 1]")
    return int((frequencies == 0).sum()), int((frequencies > dense_above).sum())


def max_cosines(true_features: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """For each ground-truth direction (F, d), its largest cosine with any learned direction (M, d): (F,).
    Both finite, with at least one row each."""
    float_tensor(true_features, "true_features", dim=2, expected="a (F >= 1, d) floating tensor of directions")
    float_tensor(learned, "learned", dim=2, expected="a (M >= 1, d) floating tensor of directions")
    if true_features.shape[1] != learned.shape[1] or learned.shape[0] == 0:
        raise ValueError(f"learned: expected (M >= 1, {true_features.shape[1]}) directions like true_features, "
                         f"got {tuple(learned.shape)}")
    if true_features.shape[0] == 0:
        raise ValueError("true_features: expected at least one direction")
    a = F.normalize(true_features.double(), dim=1)
    b = F.normalize(learned.double(), dim=1)
    return (a @ b.T).max(dim=1).values


def mmcs(true_features: torch.Tensor, learned: torch.Tensor) -> float:
    """Mean max cosine similarity: how well, on average, some learned direction matches each true one."""
    return float(max_cosines(true_features, learned).mean())


def fraction_recovered(true_features: torch.Tensor, learned: torch.Tensor, threshold: float = 0.9) -> float:
    """The fraction of ground-truth directions matched by a learned one with cosine above ``threshold``."""
    number_in(threshold, "threshold", -1, 1, expected="a cosine in [-1, 1]")
    return float((max_cosines(true_features, learned) > threshold).double().mean())


def firing_f1(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For each latent, the F1 score of "the latent fires" (f > 0) as a detector of ``mask``: (N, M), (N,) -> (M,).

    ``F1 = 2 |fires and mask| / (|fires| + |mask|)``: 1 for a latent that fires exactly where the pattern holds,
    low for one that fires everywhere (poor precision) or on a few of the positions only (poor recall).
    """
    _check_latents(f)
    if not isinstance(mask, torch.Tensor) or mask.shape != f.shape[:1]:
        raise ValueError(f"mask: expected a (N,) tensor for latents f of shape (N, M), got {describe(mask)}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask: expected a boolean pattern (bools, or 0 and 1)")
    fires, mask = (f > 0).double(), mask.to(torch.float64).reshape(-1, 1)
    both = (fires * mask).sum(0)
    return 2 * both / (fires.sum(0) + mask.sum()).clamp_min(1)


def matching_latent(f: torch.Tensor, mask: torch.Tensor) -> tuple[int, float]:
    """(index, F1) of the latent whose firing best detects the boolean pattern ``mask`` (see :func:`firing_f1`);
    ties go to the lowest index."""
    if isinstance(f, torch.Tensor) and f.dim() == 2 and f.shape[1] == 0:
        raise ValueError("f: expected at least one latent (N, M >= 1)")
    scores = firing_f1(f, mask)
    best = int(scores.argmax())
    return best, float(scores[best])


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: torch.Tensor, true_features: torch.Tensor | None = None,
             dense_above: float = 0.1) -> dict:
    """Reconstruction, sparsity and (given the ground truth) recovery of ``sae`` on activations x (N, d)."""
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae: expected a SparseAutoencoder, got {type(sae).__name__}")
    number_in(dense_above, "dense_above", 0, 1, bounds="()", expected="a fraction in (0, 1)")
    x_hat, f = sae(x)
    dead, dense = dead_and_dense(firing_frequencies(f), dense_above)
    out = {"nmse": normalized_mse(x, x_hat), "l0": l0(f), "dead": dead, "dense": dense}
    if true_features is not None:
        learned = sae.decoder
        out.update(mmcs=mmcs(true_features, learned), recovered=fraction_recovered(true_features, learned))
    return out


# --- a GPT's residual stream --------------------------------------------------------------------------------


@torch.no_grad()
def residual_stream(gpt, idx: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream (B, T, d) of ``gpt`` (an :class:`arlib.text.gpt.GPT`) entering block ``layer``:
    ``layer = 0`` is the embeddings, ``layer = n_layer`` the output of the last block."""
    layer = _layer(gpt, layer)
    return gpt.trunk(idx, n_layers=layer)[-1]


def _layer(gpt, layer) -> int:
    if not all(hasattr(gpt, a) for a in ("trunk", "config", "h", "ln_f", "wte")):
        raise TypeError(f"gpt: expected an arlib.text.gpt.GPT, got {type(gpt).__name__}")
    n = gpt.config.n_layer
    return int_in_range(layer, "layer", 0, n)


def spliced_logits(gpt, idx: torch.Tensor, layer: int, replace) -> torch.Tensor:
    """Logits (B, T, V) of ``gpt`` when its residual stream entering block ``layer`` is replaced by
    ``replace(x)`` (for an SAE: its reconstruction); the rest of the network runs unchanged."""
    layer = _layer(gpt, layer)
    if not callable(replace):
        raise TypeError(f"replace: expected a function of the residual stream, got {type(replace).__name__}")
    h = gpt.trunk(idx, n_layers=layer)[-1]  # (B, T, d)
    x = replace(h)
    if not isinstance(x, torch.Tensor) or x.shape != h.shape:
        raise ValueError(f"replace: must return a tensor of the residual stream's shape {tuple(h.shape)}, "
                         f"got {describe(x)}")
    for block in gpt.h[layer:]:
        x = block(x)
    return F.linear(gpt.ln_f(x), gpt.wte.weight)
