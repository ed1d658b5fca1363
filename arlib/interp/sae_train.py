"""Training sparse autoencoders: the L1 and TopK objectives, bias adaptation with groups (GBA), and the
activations of a GPT to train on. Every method trains through :func:`arlib.train.train` (AdamW, warm-up
and cosine decay, clipping, tqdm); an objective is a callable ``objective(sae, x) -> loss`` that may keep
state between steps (dead-latent counters, firing statistics).

- :class:`L1Objective`: ``||x - x_hat||^2 + lambda sum_i f_i ||W_dec,i||``, the decoder-norm-weighted L1 of
  Anthropic's April 2024 training update (Conerly et al. 2024); Bricken et al. 2023 used a plain L1 with unit-norm
  decoder rows.
- :class:`TopKObjective`: ``||x - x_hat||^2 + alpha ||e - e_hat||^2`` where e = x - x_hat and e_hat is
  the reconstruction of e by the k_aux largest pre-activations among the dead latents (AuxK, Gao et al.
  2025, who use alpha = 1/32).
- :class:`BiasAdaptation`: reconstruction only, no sparsity penalty; the encoder biases are not learned by
  gradient: every ``period`` steps, a neuron that fired more often than its target activation frequency lowers
  its bias by gamma_minus times its largest pre-activation, and a neuron that almost never fired raises it by
  gamma_plus times its group's mean largest pre-activation, within [-1, 0] (Chen et al. 2025, Algorithm 1, as
  :func:`bias_adaptation_update` states it). One target for all latents is bias adaptation (BA); latents split
  into groups whose targets spread from ``p_max`` to ``p_min`` is Group Bias Adaptation (GBA).

What we followed for bias adaptation: the paper's algorithm box as public descriptions of it give it (the
update above, the clip range, groups with log-spaced targets); the step sizes, the period, eps and the
fallback for a group with no live neuron are our choices, stated where they are set.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from arlib.interp.sae import SparseAutoencoder, l1_penalty, reconstruction_loss, residual_stream, topk_activation
from arlib.train import TrainConfig, train
from arlib.validate import describe, float_tensor, int_in_range, number_in, positive_int, token_ids
from arlib.validate import generator as check_generator


def _check_sae(sae) -> None:
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae: expected a SparseAutoencoder, got {type(sae).__name__}")


class L1Objective:
    """Reconstruction plus ``l1_coeff`` times the decoder-norm-weighted L1 of the latents (ReLU SAEs)."""

    def __init__(self, l1_coeff: float):
        number_in(l1_coeff, "l1_coeff", 0, math.inf, bounds="[)", expected="a finite coefficient >= 0")
        self.l1_coeff = float(l1_coeff)

    def prepare(self, sae: SparseAutoencoder) -> None:
        _check_sae(sae)
        if sae.config.activation != "relu":
            raise ValueError(f"sae: the L1 objective trains a relu SAE, got activation {sae.config.activation!r}")

    def __call__(self, sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
        x_hat, f = sae(x)
        return reconstruction_loss(x, x_hat) + self.l1_coeff * l1_penalty(f, sae.decoder)


class TopKObjective:
    """Reconstruction of a TopK SAE plus AuxK: latents silent for ``dead_after`` steps count as dead, and the
    ``k_aux`` largest of their pre-activations are asked to reconstruct the residual error."""

    def __init__(self, k_aux: int = 64, aux_coeff: float = 1 / 32, dead_after: int = 200):
        positive_int(k_aux, "k_aux")
        number_in(aux_coeff, "aux_coeff", 0, math.inf, bounds="[)", expected="a finite coefficient >= 0")
        positive_int(dead_after, "dead_after", expected="a positive number of steps")
        self.k_aux, self.aux_coeff, self.dead_after = k_aux, float(aux_coeff), dead_after
        self.silent: torch.Tensor | None = None  # (M,) steps since each latent last fired

    def prepare(self, sae: SparseAutoencoder) -> None:
        _check_sae(sae)
        if sae.config.activation != "topk":
            raise ValueError(f"sae: the TopK objective trains a topk SAE, got activation {sae.config.activation!r}")
        self.silent = torch.zeros(sae.config.n_latents, dtype=torch.long, device=sae.W_dec.device)

    def __call__(self, sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
        if self.silent is None or not isinstance(sae, SparseAutoencoder) or len(self.silent) != sae.config.n_latents:
            self.prepare(sae)  # called without train_sae (or on another SAE): start the dead-latent counters
        pre = sae.pre_activations(x)  # (N, M)
        f = topk_activation(pre, sae.config.k)
        x_hat = sae.decode(f)
        loss = reconstruction_loss(x, x_hat)
        with torch.no_grad():
            fired = (f > 0).any(0)
            self.silent = torch.where(fired, torch.zeros_like(self.silent), self.silent + 1)
            dead = self.silent >= self.dead_after  # (M,)
        n_dead = int(dead.sum())
        if n_dead and self.aux_coeff > 0:
            masked = pre.masked_fill(~dead, float("-inf"))  # only dead latents compete
            f_aux = topk_activation(masked, min(self.k_aux, n_dead)).nan_to_num(0.0)
            error = (x - x_hat).detach()
            loss = loss + self.aux_coeff * reconstruction_loss(error, f_aux @ sae.decoder)
        return loss


def group_targets(n_latents: int, n_groups: int, p_max: float, p_min: float) -> torch.Tensor:
    """Target activation frequencies (M,): ``n_groups`` contiguous groups of (nearly) equal size, the targets
    spaced geometrically from ``p_max`` (group 0) down to ``p_min`` (the last group). One group: all ``p_max``."""
    positive_int(n_latents, "n_latents")
    int_in_range(n_groups, "n_groups", 1, n_latents, expected=f"an int in [1, n_latents={n_latents}]")
    number_in(p_max, "p_max", 0, 1, bounds="()")
    number_in(p_min, "p_min", 0, 1, bounds="()")
    if not 0 < p_min <= p_max < 1:
        raise ValueError(f"p_min, p_max: expected 0 < p_min <= p_max < 1, got {p_min!r}, {p_max!r}")
    if n_groups == 1:
        levels = torch.tensor([float(p_max)], dtype=torch.float64)
    else:
        levels = torch.exp(torch.linspace(math.log(p_max), math.log(p_min), n_groups, dtype=torch.float64))
    group = torch.arange(n_latents) * n_groups // n_latents  # (M,) group of each latent
    return levels[group]


def group_ids(n_latents: int, n_groups: int) -> torch.Tensor:
    """The group (M,) of each latent for :func:`group_targets`' layout: contiguous groups of (nearly) equal size."""
    positive_int(n_latents, "n_latents")
    int_in_range(n_groups, "n_groups", 1, n_latents, expected=f"an int in [1, n_latents={n_latents}]")
    return torch.arange(n_latents) * n_groups // n_latents


def _check_groups(groups, M: int) -> torch.Tensor:
    if not isinstance(groups, torch.Tensor) or groups.shape != (M,) or groups.is_floating_point() \
            or groups.dtype == torch.bool:
        raise ValueError(f"groups: expected a ({M},) integer tensor, the group of each latent, got {describe(groups)}")
    if M and int(groups.min()) < 0:
        raise ValueError("groups: expected group ids >= 0")
    return groups.long()


def bias_adaptation_update(bias: torch.Tensor, pre: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor,
                           gamma_minus: float, gamma_plus: float, eps: float,
                           bias_range: tuple[float, float] = (-1.0, 0.0)) -> torch.Tensor:
    """One bias update of (Group) Bias Adaptation, Chen et al. 2025 (arXiv 2506.14002), Algorithm 1 as its
    public descriptions give it. ``pre`` (N, M) are the pre-activations ``(x - b_dec) W_enc + b`` of the N inputs
    buffered since the last update, with the current biases ``bias`` (M,); ``targets`` (M,) the target activation
    frequencies (TAFs) and ``groups`` (M,) the group of each neuron. Per neuron j, from the buffer:

    - p_j = the fraction of the inputs on which it fires (pre > 0), r_j = its largest pre-activation;
    - p_j > target_j (fires too often):  b_j <- max(b_j - gamma_minus * r_j, lo);
    - p_j < eps (almost never fires):    b_j <- min(b_j + gamma_plus * mean r over its group's live neurons, hi);
    - otherwise b_j is left alone: the targets are ceilings, not set-points.

    (lo, hi) = ``bias_range``, (-1, 0) in the paper, which presumes inputs scaled so that pre-activations are of
    order 1. A group with no live neuron (every p = 0) borrows the mean r of all live neurons (our choice; the
    descriptions do not say). Returns the new biases (M,), in the dtype of ``bias``.
    """
    float_tensor(pre, "pre", dim=2, expected="a (N >= 1, M) floating tensor of pre-activations")
    if pre.shape[0] == 0:
        raise ValueError("pre: expected at least one input (N >= 1)")
    M = pre.shape[1]
    float_tensor(bias, "bias", dim=1, expected=f"a ({M},) floating tensor of biases")
    if bias.shape != (M,):
        raise ValueError(f"bias: expected one bias per column of pre {tuple(pre.shape)}, got {tuple(bias.shape)}")
    if not isinstance(targets, torch.Tensor) or targets.shape != (M,) or not targets.is_floating_point() \
            or not bool(((targets > 0) & (targets < 1)).all()):
        raise ValueError(f"targets: expected a ({M},) tensor of frequencies in (0, 1), got {describe(targets)}")
    groups = _check_groups(groups, M)
    number_in(gamma_minus, "gamma_minus", 0, math.inf, bounds="()", expected="a finite step size > 0")
    number_in(gamma_plus, "gamma_plus", 0, math.inf, bounds="()", expected="a finite step size > 0")
    number_in(eps, "eps", 0, 1, bounds="()", expected="a frequency in (0, 1) below every target")
    if not eps < float(targets.min()):
        raise ValueError(f"eps: expected a frequency below every target (min {float(targets.min()):.3g}), got {eps!r}")
    if not (isinstance(bias_range, tuple | list) and len(bias_range) == 2
            and all(isinstance(v, int | float) and math.isfinite(v) for v in bias_range)
            and bias_range[0] < bias_range[1]):
        raise ValueError(f"bias_range: expected (lo, hi) with finite lo < hi, got {bias_range!r}")
    lo, hi = float(bias_range[0]), float(bias_range[1])
    pre = pre.double()
    b = bias.double()
    p_hat = (pre > 0).double().mean(0)  # (M,) measured activation frequency
    r_max = pre.max(0).values  # (M,) largest pre-activation
    live = p_hat > 0
    groups = groups.to(pre.device)
    n_groups = int(groups.max()) + 1
    live_r = torch.where(live, r_max, torch.zeros_like(r_max))
    group_sum = torch.zeros(n_groups, dtype=pre.dtype, device=pre.device).index_add_(0, groups, live_r)
    group_count = torch.zeros(n_groups, dtype=pre.dtype, device=pre.device).index_add_(0, groups, live.double())
    overall = float(live_r.sum() / live.sum()) if bool(live.any()) else 1.0
    group_mean = torch.where(group_count > 0, group_sum / group_count.clamp_min(1), torch.full_like(group_sum, overall))
    targets = targets.to(pre.device, torch.float64)
    lowered = (b - gamma_minus * r_max).clamp_min(lo)
    raised = (b + gamma_plus * group_mean[groups]).clamp_max(hi)
    new = torch.where(p_hat > targets, lowered, torch.where(p_hat < eps, raised, b))
    return new.to(bias.dtype)


class BiasAdaptation:
    """Reconstruction loss only; the encoder biases leave gradient descent and follow Chen et al.'s (Group) Bias
    Adaptation: every ``period`` steps, :func:`bias_adaptation_update` on the pre-activations of the inputs seen
    since the last update. One target for every latent is bias adaptation (BA), the case the paper's theorem
    covers; groups with targets spread by :func:`group_targets` are GBA.

    ``prepare`` starts the biases at 0 (the top of the range: every neuron starts dense and is lowered) and
    freezes them. ``history`` records, at every update, the measured frequency of each group (mean over its
    neurons) and the numbers of neurons above their target and nearly dead, to compare with the targets as
    training runs.

    Two options (ours) give the paper's theory its setting, unit-norm neurons reading centred inputs of norm
    about 1, where a pre-activation stays within [-1, 1] and the bias range [-1, 0] can gate it:
    ``unit_encoder`` projects each encoder column back to unit norm before every step, and
    ``fixed_decoder_bias`` freezes b_dec (start it at the data mean with ``init_decoder_bias``). Without them,
    a plain-ReLU SAE scales its encoder and b_dec past what the clipped biases can offset and stays dense
    (measured in chapter 6). The activation may be ``"relu"`` (the paper's theory) or ``"jump"`` (the JumpReLU form of
    :mod:`arlib.interp.sae`, whose threshold is -b; the paper's LLM experiments use JumpReLU for every method).
    """

    def __init__(self, targets: torch.Tensor, groups: torch.Tensor | None = None, period: int = 10,
                 gamma_minus: float = 0.05, gamma_plus: float = 0.05, eps: float = 1e-4,
                 bias_range: tuple[float, float] = (-1.0, 0.0), unit_encoder: bool = False,
                 fixed_decoder_bias: bool = False):
        for name, flag in (("unit_encoder", unit_encoder), ("fixed_decoder_bias", fixed_decoder_bias)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}: expected a bool, got {flag!r}")
        try:
            targets = torch.as_tensor(targets, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"targets: expected a 1-D tensor of frequencies, got {type(targets).__name__}") from None
        if targets.dim() != 1 or not bool(((targets > 0) & (targets < 1)).all()):
            raise ValueError("targets: expected a 1-D tensor of frequencies in (0, 1), one per latent")
        if groups is None:  # neurons that share a target form a group
            groups = torch.unique(targets, return_inverse=True)[1]
        self.groups = _check_groups(groups, len(targets))
        positive_int(period, "period", expected="a positive number of steps")
        # Validate the rest once, on a one-row buffer, rather than repeating the checks here.
        bias_adaptation_update(torch.zeros(len(targets)), torch.zeros(1, len(targets)), targets, self.groups,
                               gamma_minus, gamma_plus, eps, bias_range)
        self.targets, self.period = targets, period
        self.gamma_minus, self.gamma_plus, self.eps = float(gamma_minus), float(gamma_plus), float(eps)
        self.bias_range = (float(bias_range[0]), float(bias_range[1]))
        self.unit_encoder, self.fixed_decoder_bias = unit_encoder, fixed_decoder_bias
        self.buffer: list[torch.Tensor] = []  # pre-activations since the last update
        self.history: list[dict] = []

    def prepare(self, sae: SparseAutoencoder) -> None:
        _check_sae(sae)
        if sae.config.activation not in ("relu", "jump"):
            raise ValueError(f"sae: bias adaptation trains a relu or jump SAE, got {sae.config.activation!r}")
        if len(self.targets) != sae.config.n_latents:
            raise ValueError(f"targets: expected {sae.config.n_latents} frequencies, one per latent, "
                             f"got {len(self.targets)}")
        with torch.no_grad():
            sae.b_enc.zero_()
        sae.b_enc.requires_grad_(False)
        if self.fixed_decoder_bias:  # keep b_dec where init_decoder_bias put it (the data mean)
            sae.b_dec.requires_grad_(False)
        self.buffer, self.history = [], []

    def __call__(self, sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.unit_encoder:  # project the encoder columns back to the unit sphere after each step
                sae.W_enc.div_(sae.W_enc.norm(dim=0, keepdim=True).clamp_min(1e-8))
            self.buffer.append(sae.pre_activations(x.reshape(-1, x.shape[-1])))  # (N, M), with the current bias
            if len(self.buffer) == self.period:
                pre = torch.cat(self.buffer)
                targets, groups = self.targets.to(pre.device), self.groups.to(pre.device)
                p_hat = (pre > 0).double().mean(0)
                n_groups = int(groups.max()) + 1
                per_group = torch.zeros(n_groups, dtype=torch.float64, device=pre.device).index_add_(0, groups, p_hat)
                per_group /= torch.bincount(groups, minlength=n_groups).clamp_min(1)
                self.history.append({"above_target": int((p_hat > targets).sum()),
                                     "nearly_dead": int((p_hat < self.eps).sum()),
                                     "group_frequency": per_group.cpu()})
                sae.b_enc.copy_(bias_adaptation_update(sae.b_enc, pre, targets, groups, self.gamma_minus,
                                                       self.gamma_plus, self.eps, self.bias_range))
                self.buffer = []
        x_hat, _ = sae(x)
        return reconstruction_loss(x, x_hat)


def train_sae(sae: SparseAutoencoder, objective, get_batch, config: TrainConfig, evaluate=None) -> dict:
    """Train ``sae`` in place with ``objective`` on batches ``get_batch(step, generator) -> x (N, d)``.

    The optimizer is AdamW without weight decay (a decay would shrink the dictionary); see :func:`arlib.train.train`.
    """
    _check_sae(sae)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected TrainConfig, got {type(config).__name__}")
    if not callable(objective) or not callable(getattr(objective, "prepare", None)):
        raise TypeError(f"objective: expected an objective (L1Objective, TopKObjective, BiasAdaptation), "
                        f"got {type(objective).__name__}")
    if not callable(get_batch):
        raise TypeError(f"get_batch: expected a function (step, generator) -> x, got {type(get_batch).__name__}")
    objective.prepare(sae)
    return train(sae, objective, get_batch, replace(config, weight_decay=0.0), evaluate)


@torch.no_grad()
def collect_activations(gpt, ids: torch.Tensor, layer: int, n_windows: int, generator: torch.Generator,
                        window: int | None = None, batch_size: int = 16) -> torch.Tensor:
    """Residual-stream activations (n_windows * window, d) entering block ``layer`` of ``gpt``, over
    ``n_windows`` random windows of the token ids ``ids`` (every position of each window)."""
    if not all(hasattr(gpt, a) for a in ("trunk", "config", "parameters")):
        raise TypeError(f"gpt: expected an arlib.text.gpt.GPT, got {type(gpt).__name__}")
    token_ids(ids, "ids", dim=1, vocab_size=gpt.config.vocab_size, expected="a 1-D torch.long tensor of token ids")
    int_in_range(layer, "layer", 0, gpt.config.n_layer)
    positive_int(n_windows, "n_windows")
    positive_int(batch_size, "batch_size")
    check_generator(generator, optional=False)
    window = window or gpt.config.block_size
    int_in_range(window, "window", 1, gpt.config.block_size)
    if len(ids) <= window:
        raise ValueError(f"ids: need more than window={window} tokens, got {len(ids)}")
    device = next(gpt.parameters()).device
    starts = torch.randint(0, len(ids) - window, (n_windows,), generator=generator)
    out = []
    for i in range(0, n_windows, batch_size):
        idx = ids[starts[i:i + batch_size, None] + torch.arange(window)].to(device)  # (b, T)
        out.append(residual_stream(gpt, idx, layer).reshape(-1, gpt.config.n_embd))
    return torch.cat(out)
