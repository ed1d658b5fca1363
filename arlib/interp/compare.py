"""Comparing SAE training methods fairly: one knob per method, matched sparsity, several seeds, and the
recovery and consistency metrics that chapter 6 and ``benchmarks/sae_frontier.py`` report.

Every method of ``METHODS`` has one sparsity knob (its L1 coefficient, k, its L0 coefficient, or its
target activation frequency) and builds an SAE and an objective from it; :func:`fit_method` trains one on a
stream of batches with :func:`arlib.interp.sae_train.train_sae`; :func:`arlib.interp.jumprelu.match_l0`
bisects a knob to a target L0. The inputs are scaled once, by :func:`arlib.interp.jumprelu.normalization_scale`
(mean squared norm 1), for every method alike: JumpReLU's bandwidth and bias adaptation's clip range [-1, 0]
both presume inputs of that size.

- :func:`latent_matches`: for every live latent, its best cosine with a true feature, and from those the
  duplicates (two latents on one feature) and the unmatched latents (mixtures or noise).
- :func:`cross_seed_consistency`: how many of one run's live latents another seed's run also learned
  (best cosine between the two dictionaries above a threshold): our definition of the cross-seed consistency
  that Chen et al. 2025 argue for (we did not check their exact measure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from arlib.interp.jumprelu import JumpReLUObjective
from arlib.interp.sae import SAEConfig, SparseAutoencoder, evaluate
from arlib.interp.sae_train import BiasAdaptation, L1Objective, TopKObjective, group_ids, group_targets, train_sae
from arlib.train import TrainConfig
from arlib.validate import describe, float_tensor, number_in, positive_int


@dataclass(frozen=True)
class Method:
    """One training method: ``build(d, M, knob) -> (SAEConfig, objective)``; ``knob`` names its sparsity knob,
    ``bracket(target_l0, M)`` gives the (low, high) interval that :func:`arlib.interp.jumprelu.match_l0` searches, and
    ``integer`` says that the knob is an int (TopK's k: set to the target, no search)."""

    name: str
    knob: str
    build: Callable
    bracket: Callable
    integer: bool = False


def _gba_targets(M: int, p_max: float) -> torch.Tensor:
    # 8 groups, targets log-spaced over two decades below p_max (as the paper's example, 1e-1 to 1e-3; the
    # number of groups is ours)
    return group_targets(M, 8, p_max, p_max / 100)


METHODS: dict[str, Method] = {
    "L1": Method("L1", "lambda", lambda d, M, c: (SAEConfig(d, M), L1Objective(c)),
                 lambda L0, M: (0.005, 2.0)),
    "TopK": Method("TopK", "k", lambda d, M, c: (SAEConfig(d, M, "topk", k=int(c), unit_decoder=True),
                                                 TopKObjective(k_aux=min(4 * int(c), M), dead_after=100)),
                   lambda L0, M: (round(L0), round(L0)), integer=True),
    # JumpReLU with a bandwidth and an initial threshold of 0.1 and 300 warm-up steps of lambda (ours): at the
    # paper's 0.001, runs of a few thousand steps never move the thresholds and stay dense
    "JumpReLU": Method("JumpReLU", "l0_coeff",
                       lambda d, M, c: (SAEConfig(d, M, "jumprelu", unit_decoder=True),
                                        JumpReLUObjective(c, bandwidth=0.1, warmup_steps=300, init_threshold=0.1)),
                       lambda L0, M: (3e-4, 0.1)),
    "BA": Method("BA", "target frequency",
                 lambda d, M, c: (SAEConfig(d, M, "jump", unit_decoder=True),
                                  BiasAdaptation(group_targets(M, 1, c, c), torch.zeros(M, dtype=torch.long))),
                 lambda L0, M: (0.5 * L0 / M, 0.9)),
    "GBA": Method("GBA", "highest target",
                  lambda d, M, c: (SAEConfig(d, M, "jump", unit_decoder=True),
                                   BiasAdaptation(_gba_targets(M, c), group_ids(M, 8), eps=min(1e-4, c / 1000))),
                  lambda L0, M: (min(L0 / M, 0.2), min(40 * L0 / M, 0.9))),
}


def fit_method(method: str, knob: float, d: int, n_latents: int, get_batch, x_warm: torch.Tensor,
               config: TrainConfig, seed: int = 0, device=None) -> tuple[SparseAutoencoder, object]:
    """Train one SAE of ``method`` at ``knob`` (seeded: the SAE's initial weights and the batch stream);
    returns it (in eval mode) and its objective (bias adaptation keeps its frequency history there)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected TrainConfig, got {type(config).__name__}")
    positive_int(d, "d")
    positive_int(n_latents, "n_latents")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    sae_config, objective = METHODS[method].build(d, n_latents, knob)
    sae = SparseAutoencoder(sae_config, torch.Generator().manual_seed(1000 + seed))
    if device is not None:
        sae = sae.to(device)
    sae.init_decoder_bias(x_warm)
    train_sae(sae, objective, get_batch, replace(config, seed=seed))
    return sae.eval(), objective


@torch.no_grad()
def latent_matches(true_features: torch.Tensor, decoder: torch.Tensor, live: torch.Tensor,
                   threshold: float = 0.9) -> dict:
    """Each live latent's best cosine with a true feature, and what they add up to.

    true_features (F, d), decoder (M, d) the dictionary rows, live (M,) bool. Returns ``best`` (n_live,) the
    best cosines, ``matched`` the number of live latents above ``threshold``, ``features_found`` the number of
    true features that some live latent matches above it, ``duplicates`` = matched - features_found (latents
    that repeat a feature another latent already has), and ``unmatched`` the live latents whose best cosine is
    below 0.5 (mixtures of features, or noise).
    """
    float_tensor(true_features, "true_features", dim=2)
    float_tensor(decoder, "decoder", dim=2)
    if decoder.shape[1] != true_features.shape[1]:
        raise ValueError(f"decoder: expected rows of width {true_features.shape[1]}, got {tuple(decoder.shape)}")
    if not isinstance(live, torch.Tensor) or live.dtype != torch.bool or live.shape != decoder.shape[:1]:
        raise ValueError(f"live: expected a ({decoder.shape[0]},) bool tensor, got {describe(live)}")
    number_in(threshold, "threshold", 0, 1, bounds="()")
    cos = F.normalize(decoder[live].double(), dim=1) @ F.normalize(true_features.double(), dim=1).T  # (n_live, F)
    best, which = cos.max(1) if cos.numel() else (torch.zeros(0, dtype=torch.float64), torch.zeros(0).long())
    good = best > threshold
    found = int(which[good].unique().numel())
    return {"best": best.cpu(), "matched": int(good.sum()), "features_found": found,
            "duplicates": int(good.sum()) - found, "unmatched": int((best < 0.5).sum())}


@torch.no_grad()
def cross_seed_consistency(decoders: list[torch.Tensor], lives: list[torch.Tensor], threshold: float = 0.9) -> dict:
    """For every ordered pair of runs (a, b), the fraction of a's live latents whose direction b also learned
    (best cosine with b's live latents above ``threshold``), and the mean of those best cosines; averaged
    over the pairs. decoders: list of (M, d) dictionaries, lives: list of (M,) bool masks, at least two runs."""
    if not isinstance(decoders, list | tuple) or len(decoders) < 2 or len(lives) != len(decoders):
        raise ValueError("decoders, lives: expected two lists of the same length >= 2 (one entry per run)")
    fractions, means = [], []
    for i, (da, la) in enumerate(zip(decoders, lives)):
        for j, (db, lb) in enumerate(zip(decoders, lives)):
            if i == j:
                continue
            a, b = F.normalize(da[la].double(), dim=1), F.normalize(db[lb].double(), dim=1)
            if len(a) == 0 or len(b) == 0:
                fractions.append(0.0), means.append(0.0)
                continue
            best = (a @ b.T).max(1).values
            fractions.append(float((best > threshold).double().mean()))
            means.append(float(best.mean()))
    return {"shared_fraction": sum(fractions) / len(fractions), "mean_best_cosine": sum(means) / len(means),
            "pairs": len(fractions)}


def summarize(sae: SparseAutoencoder, x_test: torch.Tensor, true_features: torch.Tensor | None = None) -> dict:
    """:func:`arlib.interp.sae.evaluate` plus, with true features, the per-latent matches (without the array)."""
    out = evaluate(sae, x_test, true_features)
    if true_features is not None:
        with torch.no_grad():
            live = (sae.encode(x_test) > 0).any(0)
        m = latent_matches(true_features, sae.decoder.detach(), live)
        out.update({k: v for k, v in m.items() if k != "best"})
    return out
