"""Training sparse autoencoders: the L1 and TopK objectives, bias adaptation with groups (GBA), and the
activations of a GPT to train on. Every method trains through :func:`arlib.train.train` (AdamW, warm-up
and cosine decay, clipping, tqdm); an objective is a callable ``objective(sae, x) -> loss`` that may keep
state between steps (dead-latent counters, firing statistics).

- :class:`L1Objective`: ``||x - x_hat||^2 + lambda sum_i f_i ||W_dec,i||`` (Bricken et al. 2023).
- :class:`TopKObjective`: ``||x - x_hat||^2 + alpha ||e - e_hat||^2`` where e = x - x_hat and e_hat is
  the reconstruction of e by the k_aux largest pre-activations among the dead latents (AuxK, Gao et al.
  2025, who use alpha = 1/32).
- :class:`BiasAdaptation`: reconstruction only, no sparsity penalty; the encoder biases are not learned by
  gradient but set every ``period`` steps so that each latent fires at its target activation frequency
  (Chen et al. 2025). With one target for all latents this is bias adaptation; with latents split into
  groups whose targets spread from ``p_max`` to ``p_min`` it is Group Bias Adaptation (GBA).

What is the paper's and what is ours in :class:`BiasAdaptation`: the paper's are the idea and its
ingredients (sparsity controlled through the encoder biases alone, with no penalty in the loss; periodic
updates driven by each neuron's measured activation frequency against a target; groups of neurons with
different target frequencies). The exact update below is our own rule, written from that description
because we could not consult the paper's algorithm box: geometric spacing of the groups' targets;
:func:`bias_adaptation_step`, which moves each bias a fraction ``rate`` of the way to the bias that would have
given exactly the target frequency on the inputs seen since the last update (a quantile of the latent's
pre-activations); and the JumpReLU gate of :mod:`arlib.interp.sae` (activation ``"jump"``).
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


def calibrated_bias(drive: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Biases (M,) with which each latent fires on ``ceil(target * N)`` of the N inputs whose bias-free
    pre-activations are ``drive`` (N, M): minus the midpoint between the k-th and (k+1)-th largest drive.
    drive finite with N >= 1 rows; targets (M,) frequencies in (0, 1]."""
    float_tensor(drive, "drive", dim=2, expected="a (N >= 1, M) floating tensor of pre-activations")
    if drive.shape[0] == 0:
        raise ValueError("drive: expected at least one input (N >= 1)")
    if not isinstance(targets, torch.Tensor) or targets.shape != drive.shape[1:]:
        raise ValueError(f"targets: expected one frequency per column of drive {tuple(drive.shape)}, "
                         f"got {describe(targets)}")
    if not bool(((targets > 0) & (targets <= 1)).all()):
        raise ValueError("targets: expected frequencies in (0, 1]")
    N = drive.shape[0]
    k = (targets * N).ceil().long().clamp(1, max(N - 1, 1))  # (M,)
    top = drive.topk(min(int(k.max()) + 1, N), dim=0).values  # (K + 1, M), largest first
    kth, following = top.gather(0, (k - 1)[None])[0], top.gather(0, k.clamp(max=len(top) - 1)[None])[0]
    return -(kth + following) / 2


def bias_adaptation_step(bias: torch.Tensor, drive: torch.Tensor, targets: torch.Tensor, rate: float) -> torch.Tensor:
    """One bias update (ours; see the module docstring): ``b + rate * (b_star - b)``, where ``b_star`` =
    :func:`calibrated_bias` is the bias with which each latent would have fired at exactly its target frequency
    on the inputs seen since the last update, whose bias-free pre-activations are ``drive`` (N, M).

    The firing frequency is monotone in the bias, so the new bias, between b and b_star, gives a frequency
    between the old one and the target on those inputs: each step moves every latent toward its target.
    """
    number_in(rate, "rate", 0, 1, bounds="(]", expected="a fraction in (0, 1]")
    float_tensor(drive, "drive", dim=2, expected="a (N >= 1, M) floating tensor of pre-activations")
    float_tensor(bias, "bias", dim=1, expected="a (M,) floating tensor of biases")
    if bias.shape != drive.shape[1:]:
        raise ValueError(f"bias: expected one bias per column of drive {tuple(drive.shape)}, got {tuple(bias.shape)}")
    return bias + rate * (calibrated_bias(drive, targets).to(bias.dtype) - bias)


class BiasAdaptation:
    """Reconstruction loss only; every ``period`` steps each encoder bias moves toward its latent's target
    activation frequency ``targets`` (M,) with :func:`bias_adaptation_step` (GBA with grouped targets,
    see :func:`group_targets`). The biases leave gradient descent: ``prepare`` freezes them, and the
    first batch sets them with :func:`calibrated_bias` (ours) so that training starts at the targets."""

    def __init__(self, targets: torch.Tensor, period: int = 10, rate: float = 0.5):
        try:
            targets = torch.as_tensor(targets, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"targets: expected a 1-D tensor of frequencies, got {type(targets).__name__}") from None
        if targets.dim() != 1 or not bool(((targets > 0) & (targets < 1)).all()):
            raise ValueError("targets: expected a 1-D tensor of frequencies in (0, 1), one per latent")
        positive_int(period, "period", expected="a positive number of steps")
        number_in(rate, "rate", 0, 1, bounds="(]", expected="a fraction in (0, 1]")
        self.targets, self.period, self.rate = targets, period, float(rate)
        self.drives: list[torch.Tensor] = []  # bias-free pre-activations since the last update
        self.updates = 0

    def prepare(self, sae: SparseAutoencoder) -> None:
        _check_sae(sae)
        if sae.config.activation == "topk":
            raise ValueError("sae: bias adaptation trains a jump (or relu) SAE, not a topk one")
        if len(self.targets) != sae.config.n_latents:
            raise ValueError(f"targets: expected {sae.config.n_latents} frequencies, one per latent, "
                             f"got {len(self.targets)}")
        sae.b_enc.requires_grad_(False)

    def __call__(self, sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            drive = sae.pre_activations(x.reshape(-1, x.shape[-1]), bias=False)  # (N, M)
            targets = self.targets.to(drive.device)
            if self.updates == 0 and not self.drives:  # the first batch: start every latent at its target
                sae.b_enc.copy_(calibrated_bias(drive, targets))
            self.drives.append(drive)
            if len(self.drives) == self.period:
                sae.b_enc.copy_(bias_adaptation_step(sae.b_enc, torch.cat(self.drives), targets, self.rate))
                self.drives, self.updates = [], self.updates + 1
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
