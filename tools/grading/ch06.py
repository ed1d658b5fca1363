"""Grading specs of chapter 6: TopK, mean max cosine, one bias adaptation step, the best-matching latent."""

from __future__ import annotations

import numpy as np
import torch

from tools.grading.core import Case, Spec, close, describe, int_of, t, tensor_close


def _topk_cases(rng):
    cases = []
    for k in range(5):
        shape = (int(rng.integers(1, 20)), int(rng.integers(1, 40)))
        if k == 4:
            shape = (int(rng.integers(1, 4)),) + shape
        pre = rng.standard_normal(shape) - (1.5 if k == 2 else 0.0)  # k == 2: fewer positive entries than k
        if k == 3:
            pre[..., 0] = -10.0  # the largest magnitude, the smallest value
        kk = int(rng.integers(1, shape[-1] + 1))
        dtype = torch.float32 if k % 2 else torch.float64
        cases.append(Case((t(pre, dtype), kk), f"pre of shape {shape}, k = {kk}"))
    return cases


def _topk(case):
    from arlib.interp.sae import topk_activation

    return topk_activation(*case.args)


def _topk_compare(got, expected, case):
    return tensor_close(got, expected, 1e-6, 1e-6)


def _mmcs_cases(rng):
    cases = []
    for k in range(5):
        F_, M, d = int(rng.integers(1, 20)), int(rng.integers(1, 40)), int(rng.integers(2, 12))
        truth = rng.standard_normal((F_, d))
        learned = rng.standard_normal((M, d)) * rng.uniform(0.1, 4, (M, 1))
        n = min(F_, M)
        sign = -1.0 if k == 3 else 1.0
        learned[:n] = sign * truth[:n] * rng.uniform(0.2, 3, (n, 1)) + 0.3 * rng.standard_normal((n, d))
        dtype = torch.float32 if k == 4 else torch.float64
        cases.append(Case((t(truth, dtype), t(learned, dtype)), f"{F_} true and {M} learned directions in {d} dims"))
    return cases


def _mmcs(case):
    from arlib.interp.sae import mmcs

    return float(mmcs(case.args[0].double(), case.args[1].double()))


def _bias_cases(rng):
    cases = []
    for k in range(5):
        N, M, n_groups = int(rng.integers(100, 900)), int(rng.integers(4, 24)), int(rng.integers(1, 4))
        z = rng.standard_normal((N, M)) * rng.uniform(0.1, 0.6, M)
        bias = -rng.uniform(0, 0.9, M)
        groups = np.arange(M) % n_groups
        targets = np.exp(np.linspace(np.log(0.2), np.log(0.01), n_groups))[groups]
        dead = rng.uniform(0, 1, M) < 0.3
        dead[:n_groups] = False  # every group keeps a live neuron
        bias[dead] = -(z[:, dead].max(0) + 0.05)
        bias[:n_groups] = np.maximum(bias[:n_groups], -np.median(z[:, :n_groups], axis=0))  # they fire: live
        gm, gp = float(rng.choice([rng.uniform(0.01, 0.2), rng.uniform(1, 3)])), float(rng.uniform(0.01, 1))
        dtype = torch.float32 if k == 4 else torch.float64
        cases.append(Case((t(z + bias, dtype), t(bias, dtype), t(targets), t(groups, torch.long), gm, gp, 1e-3),
                          f"{N} inputs, {M} neurons in {n_groups} group(s), gamma_minus {gm:.3g}, gamma_plus {gp:.3g}"))
    return cases


def _bias(case):
    from arlib.interp.sae_train import bias_adaptation_update

    pre, bias, targets, groups, gm, gp, eps = case.args
    return bias_adaptation_update(bias.double(), pre.double(), targets, groups, gm, gp, eps)


def _bias_compare(got, expected, case):
    return tensor_close(got, expected, 1e-5 if case.args[0].dtype == torch.float32 else 1e-9, 1e-5)


def _latent_cases(rng):
    cases = []
    for k in range(4):
        N, M = int(rng.integers(100, 800)), int(rng.integers(3, 40))
        fires = rng.uniform(0, 1, (N, M)) < rng.uniform(0.02, 0.25, M)
        f = fires * (rng.uniform(0, 1, (N, M)) + 0.1)
        mask = rng.uniform(0, 1, N) < rng.uniform(0.03, 0.2)
        j = int(rng.integers(M))
        f[:, j] = np.where(mask & (rng.uniform(0, 1, N) < 0.8), 1.0, 0.0)
        f[:, (j + 1) % M] = 0.3  # a decoy that fires everywhere
        mask_t = t(mask, torch.long if k == 3 else torch.bool)
        cases.append(Case((t(f, torch.float32 if k == 2 else torch.float64), mask_t), f"{N} inputs, {M} latents"))
    return cases


def _latent(case):
    from arlib.interp.sae import firing_f1

    return firing_f1(*case.args).double()


def _latent_compare(got, scores, case):
    value = int_of(got)
    if value is None:
        return f"expected an int, got {describe(got)}"
    if not 0 <= value < len(scores):
        return f"index {value} out of range"
    best = float(scores.max())
    return None if abs(float(scores[value]) - best) < 1e-9 else (
        f"latent {value} has F1 {float(scores[value]):.4f}, the best is {int(scores.argmax())} with {best:.4f}")


SPECS = [
    Spec("6.1", ("topk_latents",), ("arlib.interp.sae.topk_activation",), _topk_cases, _topk, _topk_compare),
    Spec("6.2", ("mean_max_cosine",), ("arlib.interp.sae.mmcs", "arlib.interp.sae.max_cosines"), _mmcs_cases, _mmcs,
         close(1e-5)),
    Spec("6.3", ("adapt_bias",), ("arlib.interp.sae_train.bias_adaptation_update",
                                  "arlib.interp.sae_train.BiasAdaptation"),
         _bias_cases, _bias, _bias_compare),
    Spec("6.4", ("find_latent",), ("arlib.interp.sae.matching_latent", "arlib.interp.sae.firing_f1"), _latent_cases,
         _latent, _latent_compare),
]
