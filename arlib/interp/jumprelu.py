"""JumpReLU sparse autoencoders as published (Rajamanoharan et al. 2024, "Jumping Ahead"), trained through
straight-through estimators (STEs) of the threshold.

The SAE is :class:`arlib.interp.sae.SparseAutoencoder` with ``activation="jumprelu"``:

    z = (x - b_dec) W_enc + b_enc,     f = JumpReLU_theta(z) = z * H(z - theta),     x_hat = f W_dec + b_dec

with H the Heaviside step (1 for a positive argument, else 0) and one learned threshold theta_i > 0 per latent,
stored as log theta so that it stays positive. A latent below its threshold is exactly zero; above it, it
passes z_i unshrunk. The loss penalizes the number of active latents itself, not a proxy such as the L1:

    L = ||x - x_hat||^2 + lambda ||f||_0,        ||f||_0 = sum_i H(z_i - theta_i).

Both JumpReLU and the L0 are piecewise constant in theta, so their true derivative in theta is zero almost
everywhere. The paper replaces it in the backward pass by a pseudo-derivative (its eqs. 11 and 12): a kernel
density estimate, with kernel K and bandwidth epsilon, of the derivative of the expected loss,

    d/dtheta JumpReLU_theta(z) := -(theta / epsilon) K((z - theta) / epsilon),
    d/dtheta H(z - theta)      := -(1 / epsilon) K((z - theta) / epsilon),

with the rectangle kernel K(u) = H(u + 1/2) - H(u - 1/2). Only pre-activations within epsilon / 2 of the
threshold move it: the L0 term always pushes theta up, the reconstruction term pushes it down where a latent
just below threshold would have helped (and up where one just above hurt). The gradient to z is the ordinary
one: JumpReLU passes it through the active entries (dz = 1[z > theta]), and the step gives none, so the
sparsity penalty trains the thresholds only.

What follows the paper: the activation, the loss, the pseudo-derivatives and the rectangle kernel, the
threshold stored as its logarithm. The hyperparameters below are those that Gemma Scope (Lieberum et al. 2024;
the same group, training the same SAEs) states, which we checked there: the bandwidth epsilon = 0.001 and the
initial threshold 0.001 (``DEFAULT_BANDWIDTH`` and ``arlib.interp.sae.JUMPRELU_INIT_THRESHOLD``), both meant
for inputs multiplied by one fixed scalar to a mean squared norm of 1 (:func:`normalization_scale`), the scalar
folded into the parameters after training (:func:`fold_input_scale`, as their appendix A does); a linear
warm-up of lambda from 0 (over their first 10,000 steps); the pre-encoder bias (b_dec subtracted from x before
the encoder during training); decoder rows kept at unit norm (they renormalize after every step and project
the gradient; :class:`arlib.interp.sae.SparseAutoencoder` with ``unit_decoder=True`` keeps the same constraint by
dividing each row by its norm in the forward pass, whose gradient is that projection); the encoder initialized
as the transpose of the decoder and b_enc at zero.

What is ours: the warm-up length (``warmup_steps``, default 0); random Gaussian rather than He-uniform decoder
rows, and b_dec started at the data mean where chapter 6 does so; the optimizer of
:func:`arlib.interp.sae_train.train_sae` (AdamW without decay, betas (0.9, 0.95), warm-up, cosine decay, gradient
clipping; Gemma Scope uses Adam with beta1 = 0 at 7e-5 after a 1,000-step warm-up, for a million steps and more);
``init_threshold`` and the larger bandwidths that chapter 6's short runs use; :func:`match_l0`, a bisection of the
penalty to a target L0. Why short runs need them: Adam moves log theta by at most about the learning rate per
step, so 1,500 steps at 3e-3 (with warm-up and cosine decay) can multiply theta by about 10 at most, and with
epsilon = 0.001 only the rare pre-activations within 0.0005 of theta move it at all. In our runs on chapter 6's
mixture the paper's 0.001 and 0.001 left the code dense (120 of 512 latents active on every input, the thresholds
still near 0.001) for lambda = 0.001, 0.01 and 1; thresholds and bandwidth of 0.1 gave a sparse code whose L0
follows lambda.
"""

from __future__ import annotations

import math

import torch

from arlib.interp.sae import SparseAutoencoder, reconstruction_loss
from arlib.validate import float_tensor, int_at_least, is_number, number_in, positive_int

DEFAULT_BANDWIDTH = 0.001  # epsilon of the paper and of Gemma Scope, for inputs of unit mean squared norm


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel ``K(u) = H(u + 1/2) - H(u - 1/2)``: 1 for u in (-1/2, 1/2], else 0 (same shape as u).
    The estimators below build the same kernel inline, from float comparisons."""
    float_tensor(u, "u", finite=False, expected="a floating tensor")
    return ((u > -0.5) & (u <= 0.5)).to(u.dtype)


# The masks are built as floats with in-place comparisons: on CPU that is several times faster than bool masks
# and torch.where, and the estimators run at every training step.


def _gate(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``H(z - theta)`` as 0.0 / 1.0 in z's dtype: (..., M)."""
    return (z - theta).gt_(0).to(z.dtype)


def _window_sum(grad: torch.Tensor, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``sum_n grad_n K((z_n - theta) / eps)`` over every leading dimension: (..., M) -> theta's shape (M,),
    with the rectangle kernel written as in the paper, ``K(u) = H(u + 1/2) - H(u - 1/2)``."""
    d = z - theta  # (..., M)
    kernel = (d + 0.5 * eps).gt_(0).sub_((d - 0.5 * eps).gt_(0))  # 1 where -eps/2 < z - theta <= eps/2
    total = grad * kernel
    return total.reshape(-1, total.shape[-1]).sum(0) if theta.dim() else total.sum()


class _JumpReLU(torch.autograd.Function):
    """Forward ``z * H(z - theta)``; backward dz = H(z - theta), dtheta = -(theta / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        gate = _gate(z, theta)  # (..., M)
        ctx.save_for_backward(z, theta, gate)
        ctx.bandwidth = bandwidth
        return z * gate

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, theta, gate = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * gate  # (..., M): the identity on the active entries
        grad_theta = -(theta / eps) * _window_sum(grad, z, theta, eps)  # (M,): eq. 11 of the paper, summed
        return grad_z, grad_theta, None


class _Step(torch.autograd.Function):
    """Forward ``H(z - theta)``; backward dz = 0, dtheta = -(1 / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return _gate(z, theta)  # (..., M)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * _window_sum(grad, z, theta, eps)  # (M,): eq. 12 of the paper, summed
        return None, grad_theta, None  # no gradient to z (None: autograd's zero)


def _check_args(z, threshold, bandwidth) -> float:
    """Cheap checks (types and shapes, no scan of the values: these run at every training step)."""
    float_tensor(z, "z", finite=False, expected="a floating tensor of pre-activations (..., M)")
    if z.dim() < 1:
        raise ValueError("z: expected a tensor of pre-activations (..., M), got a scalar")
    float_tensor(threshold, "threshold", dim=1, finite=False, expected="a (M,) floating tensor of thresholds")
    if threshold.shape != z.shape[-1:]:
        raise ValueError(f"threshold: expected shape ({z.shape[-1]},), one per latent, got {tuple(threshold.shape)}")
    if threshold.device != z.device:
        raise ValueError(f"threshold: expected the device of z ({z.device}), got {threshold.device}")
    number_in(bandwidth, "bandwidth", 0, math.inf, bounds="()", expected="a finite bandwidth epsilon > 0")
    return float(bandwidth)


def jumprelu(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float = DEFAULT_BANDWIDTH) -> torch.Tensor:
    """``JumpReLU_theta(z) = z * H(z - theta)``: z (..., M), threshold (M,) -> (..., M), with the paper's STE.

    Forward: exactly z where z > theta, else 0. Backward: the gradient reaches z on the active entries and
    theta through the pseudo-derivative ``-(theta / bandwidth) K((z - theta) / bandwidth)`` (rectangle K).
    """
    eps = _check_args(z, threshold, bandwidth)
    return _JumpReLU.apply(z, threshold, eps)


def heaviside_step(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float = DEFAULT_BANDWIDTH) -> torch.Tensor:
    """``H(z - theta)``: z (..., M), threshold (M,) -> (..., M) of 0s and 1s, with the paper's STE.

    Summed over the latents it is the L0 of the JumpReLU code. Backward: no gradient to z; to theta the
    pseudo-derivative ``-(1 / bandwidth) K((z - theta) / bandwidth)`` (rectangle K).
    """
    eps = _check_args(z, threshold, bandwidth)
    return _Step.apply(z, threshold, eps)


def _check_sae(sae) -> None:
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae: expected a SparseAutoencoder, got {type(sae).__name__}")
    if sae.config.activation != "jumprelu":
        raise ValueError(f"sae: the JumpReLU objective trains a jumprelu SAE, got activation "
                         f"{sae.config.activation!r}")
    if not sae.config.unit_decoder:
        raise ValueError("sae: the JumpReLU objective trains an SAE with unit_decoder=True (the paper keeps the "
                         "decoder rows at unit norm, which gives the bandwidth its scale)")


class JumpReLUObjective:
    """``||x - x_hat||^2 + lambda_t ||f||_0`` for a jumprelu SAE, trained through the STEs of this module.

    ``l0_coeff`` is lambda; it rises linearly from 0 over the first ``warmup_steps`` training calls (0: no
    warm-up), as the paper's does over its first 10,000 steps. ``bandwidth`` is epsilon, in the units of the
    inputs: the paper's 0.001 assumes inputs of unit mean squared norm (see :func:`normalization_scale`).
    ``init_threshold``, if given, is the threshold ``prepare`` gives every latent before training (ours: a
    short run needs a start nearer the pre-activations' scale than the paper's 0.001); None keeps the SAE's.
    Calls under ``torch.no_grad`` (evaluation) do not advance the warm-up. Use with
    :func:`arlib.interp.sae_train.train_sae`, on inputs scaled as the paper's are::

        c = normalization_scale(x_sample)
        sae.init_decoder_bias(c * x_sample)  # optional (ours)
        train_sae(sae, JumpReLUObjective(l0_coeff), lambda step, g: c * get_batch(step, g), config)
        fold_input_scale(sae, c)  # the SAE now takes the raw activations
    """

    def __init__(self, l0_coeff: float, bandwidth: float = DEFAULT_BANDWIDTH, warmup_steps: int = 0,
                 init_threshold: float | None = None):
        number_in(l0_coeff, "l0_coeff", 0, math.inf, bounds="[)", expected="a finite coefficient >= 0")
        number_in(bandwidth, "bandwidth", 0, math.inf, bounds="()", expected="a finite bandwidth epsilon > 0")
        int_at_least(warmup_steps, "warmup_steps", 0, expected="a number of steps >= 0")
        if init_threshold is not None:
            number_in(init_threshold, "init_threshold", 0, math.inf, bounds="()",
                      expected="a finite threshold > 0, or None")
        self.l0_coeff, self.bandwidth, self.warmup_steps = float(l0_coeff), float(bandwidth), int(warmup_steps)
        self.init_threshold = None if init_threshold is None else float(init_threshold)
        self.steps = 0  # training calls so far (drives the warm-up)

    def coefficient(self) -> float:
        """lambda at the current step: ``l0_coeff * min(1, steps / warmup_steps)``."""
        if self.warmup_steps == 0:
            return self.l0_coeff
        return self.l0_coeff * min(1.0, self.steps / self.warmup_steps)

    def prepare(self, sae: SparseAutoencoder) -> None:
        """Check that ``sae`` is a jumprelu SAE with unit-norm decoder rows; restart the warm-up; set the
        thresholds to ``init_threshold`` if one was given."""
        _check_sae(sae)
        self.steps = 0
        if self.init_threshold is not None:
            with torch.no_grad():
                sae.log_threshold.fill_(math.log(self.init_threshold))

    def __call__(self, sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
        _check_sae(sae)
        z = sae.pre_activations(x)  # (..., M), with b_enc; checks x
        theta = sae.threshold  # (M,)
        f = jumprelu(z, theta, self.bandwidth)  # (..., M)
        x_hat = sae.decode(f)  # (..., d)
        l0 = heaviside_step(z, theta, self.bandwidth).sum(-1).mean()  # mean number of active latents
        loss = reconstruction_loss(x, x_hat) + self.coefficient() * l0
        if torch.is_grad_enabled():
            self.steps += 1
        return loss


# --- input scale ------------------------------------------------------------------------------------------


@torch.no_grad()
def normalization_scale(x: torch.Tensor) -> float:
    """The scalar c with ``mean ||c x||^2 = 1`` over the activations x (N >= 1, d): ``1 / sqrt(mean ||x||^2)``.

    Gemma Scope (Lieberum et al. 2024) trains on activations multiplied by one such fixed scalar, so that the
    bandwidth, the initial threshold and lambda carry over between layers and models.
    """
    float_tensor(x, "x", dim=2, expected="a (N >= 1, d) floating tensor of activations")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x: expected at least one activation of width >= 1, got {tuple(x.shape)}")
    mean_square = float(x.double().pow(2).sum(1).mean())
    if not mean_square > 0:
        raise ValueError("x: every activation is zero, so no scale normalizes it")
    return 1.0 / math.sqrt(mean_square)


@torch.no_grad()
def fold_input_scale(sae: SparseAutoencoder, scale: float) -> SparseAutoencoder:
    """Rescale, in place, an SAE trained on ``scale * x`` so that it takes the raw x; returns it.

    With b_dec, b_enc and theta divided by ``scale`` the pre-activations, the latents and x_hat are those of the
    trained SAE on ``scale * x``, divided by ``scale`` (every activation commutes with a positive scale). The
    directions W_enc and W_dec are unchanged; so are L0, the normalized MSE and the recovery metrics.
    """
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae: expected a SparseAutoencoder, got {type(sae).__name__}")
    if not is_number(scale) or not (0 < scale < math.inf):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
    sae.b_dec.div_(scale)
    sae.b_enc.div_(scale)
    if sae.config.activation == "jumprelu":
        sae.log_threshold.sub_(math.log(scale))
    return sae


# --- matching a target L0 ---------------------------------------------------------------------------------


def match_l0(fit, target: float, low: float, high: float, rtol: float = 0.02, max_fits: int = 12):
    """Bisect a sparsity coefficient until ``fit(coeff)`` reaches an L0 within ``rtol`` of ``target``.

    ``fit(coeff)`` trains one SAE and returns its L0, or a dict of metrics with an ``"l0"`` entry. The
    coefficient is searched between ``low`` and ``high`` (0 < low < high), geometrically, with a log-log
    interpolation step when it stays inside the bracket; L0 may grow or shrink with the coefficient (an L1 or L0
    penalty shrinks it, a target activation frequency grows it), but must cross ``target`` between the two
    ends. Returns ``(coeff, result)`` of the fit closest to the target (within ``rtol`` unless ``max_fits``
    fits did not suffice: check ``result``), having made at most ``max_fits`` fits (the two ends included).
    """
    if not callable(fit):
        raise TypeError(f"fit: expected a function coeff -> L0 or metrics, got {type(fit).__name__}")
    number_in(target, "target", 0, math.inf, bounds="()", expected="a finite L0 > 0")
    number_in(low, "low", 0, math.inf, bounds="()", expected="a finite coefficient > 0")
    number_in(high, "high", 0, math.inf, bounds="()", expected="a finite coefficient > 0")
    if not low < high:
        raise ValueError(f"low, high: expected low < high, got {low!r}, {high!r}")
    number_in(rtol, "rtol", 0, 1, bounds="()", expected="a relative tolerance in (0, 1)")
    positive_int(max_fits, "max_fits")
    if max_fits < 2:
        raise ValueError(f"max_fits: expected at least 2 (the two ends), got {max_fits}")

    tried: list[tuple[float, float, object]] = []  # (coeff, L0, result)

    def run(coeff: float) -> float:
        result = fit(coeff)
        value = result.get("l0") if isinstance(result, dict) else result
        if not is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"fit: expected an L0 >= 0 (or a dict with one under 'l0'), got {value!r} "
                             f"for coeff={coeff!r}")
        tried.append((coeff, float(value), result))
        return float(value)

    def best():
        coeff, _, result = min(tried, key=lambda t: abs(t[1] - target))
        return coeff, result

    a, b = float(low), float(high)
    la, lb = run(a), run(b)
    if min(abs(la - target), abs(lb - target)) <= rtol * target:
        return best()
    if (la - target) * (lb - target) > 0:
        raise ValueError(f"low, high: L0 does not cross target={target} between them (L0 {la:.3g} at {a:.3g}, "
                         f"{lb:.3g} at {b:.3g}); widen the bracket")
    while len(tried) < max_fits:
        c = math.sqrt(a * b)  # geometric midpoint
        if la > 0 and lb > 0:  # log-log interpolation, kept away from the ends
            t = (math.log(target) - math.log(la)) / (math.log(lb) - math.log(la))
            t = min(max(t, 0.2), 0.8)
            c = math.exp(math.log(a) + t * (math.log(b) - math.log(a)))
        value = run(c)
        if abs(value - target) <= rtol * target:
            break
        if (value - target) * (la - target) > 0:
            a, la = c, value
        else:
            b, lb = c, value
    return best()
