"""Sparse autoencoder training: throughput and recovery of every variant for the same budget, in one run.

    python benchmarks/sae.py            # 1500 steps of 512 synthetic activations per variant
    python benchmarks/sae.py --quick    # 300 steps

Every variant (ReLU + L1, TopK + AuxK, JumpReLU + L0, bias adaptation with one target, GBA with 8 groups) trains
on the same synthetic data with known features as chapter 6 (256 features in 64 dimensions, frequencies 0.001 to
0.1, 512 latents, scaled to mean squared norm 1), for the same number of steps and activations, through the same
loop (arlib.train). The knobs are rough (L0 near 8); benchmarks/sae_frontier.py matches them. It prints
the training throughput (activations per second, over the whole run, including the bias updates and AuxK),
the ratio to the L1 SAE measured in this run, and what the budget bought: L0, normalized MSE, dead latents,
mean max cosine similarity and the fraction of features recovered (cosine > 0.9). A second table times a few
steps at the size of chapter 6's GPT SAE (width 256, 1024 latents, batches of 1024). Compare ratios across
machines, not activations per second.

Closing note: see the table this prints; chapter 6 compares the methods' quality at matched sparsity from
benchmarks/sae_frontier.py, and this script only their training throughput.
"""

from __future__ import annotations

import argparse
import time

import torch

import arlib
from arlib.interp.jumprelu import JumpReLUObjective, normalization_scale
from arlib.interp.sae import SAEConfig, SparseAutoencoder, evaluate
from arlib.interp.sae_train import BiasAdaptation, L1Objective, TopKObjective, group_targets, train_sae
from arlib.interp.superposition import SparseMixture
from arlib.train import TrainConfig


def variants(d: int, M: int, k: int) -> dict:
    """name -> (SAE config, objective factory); sparsity near k latents per input for every variant."""
    return {
        "ReLU + L1": (SAEConfig(d, M), lambda: L1Objective(0.3)),
        f"TopK (k={k}) + AuxK": (SAEConfig(d, M, "topk", k=k, unit_decoder=True),
                                 lambda: TopKObjective(k_aux=4 * k, dead_after=100)),
        "JumpReLU + L0": (SAEConfig(d, M, "jumprelu", unit_decoder=True), lambda: JumpReLUObjective(1e-3)),
        "bias adaptation": (SAEConfig(d, M, "jump", unit_decoder=True),
                            lambda: BiasAdaptation(group_targets(M, 1, 2 * k / M, 2 * k / M))),
        "GBA, 8 groups": (SAEConfig(d, M, "jump", unit_decoder=True),
                          lambda: BiasAdaptation(group_targets(M, 8, 0.08, 0.08 / 25))),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps, batch = (300, 512) if args.quick else (1500, 512)
    device = arlib.setup(seed=0)  # both cores, as the chapter runs
    d, F, M, k = 64, 256, 512, 8
    mixture = SparseMixture.random(F, d, 0.001, 0.1, torch.Generator().manual_seed(0))
    x_warm = mixture.sample(4096, torch.Generator().manual_seed(2))[0].to(device)
    scale = normalization_scale(x_warm)  # mean squared norm 1, as chapter 6 trains every method
    x_test = mixture.sample(8192, torch.Generator().manual_seed(1))[0].to(device) * scale
    x_warm = x_warm * scale
    features = mixture.features.to(device)
    print(f"synthetic data: {F} features in {d} dimensions (true L0 {float(mixture.frequencies.sum()):.1f}); "
          f"{M} latents; {steps} steps of {batch} activations per variant; {torch.get_num_threads()} threads, {device}")
    print(f"{'variant':>22} | {'activations/s':>13} | {'vs L1':>6} | {'L0':>5} | {'NMSE':>6} | {'dead':>4} | "
          f"{'MMCS':>5} | recovered")
    base = None
    for name, (config, objective) in variants(d, M, k).items():
        sae = SparseAutoencoder(config, torch.Generator().manual_seed(5)).to(device)
        sae.init_decoder_bias(x_warm)
        sync(device)
        start = time.perf_counter()
        train_sae(sae, objective(), lambda s, g: mixture.sample(batch, g)[0].to(device) * scale,
                  TrainConfig(steps=steps, lr=3e-3, warmup=min(100, steps), progress=False))
        sync(device)
        rate = steps * batch / (time.perf_counter() - start)
        base = base or rate
        r = evaluate(sae, x_test, features)
        print(f"{name:>22} | {rate:13,.0f} | {rate / base:5.2f}x | {r['l0']:5.1f} | {r['nmse']:6.3f} | "
              f"{r['dead']:4d} | {r['mmcs']:5.3f} | {r['recovered']:9.3f}")
    # the size of chapter 6's GPT SAE: pre-collected activations, no data generation in the loop
    d, M, k, batch, n_steps = 256, 1024, 32, 1024, 20 if args.quick else 60
    acts = torch.randn(16 * batch, d, generator=torch.Generator().manual_seed(3)).to(device) / 16  # mean squared norm 1
    print(f"\nGPT-sized SAE: width {d}, {M} latents, batches of {batch}, {n_steps} timed steps (after 5 warm-up)")
    print(f"{'variant':>22} | {'activations/s':>13} | {'vs L1':>6}")
    base = None
    for name, (config, objective) in variants(d, M, k).items():
        sae = SparseAutoencoder(config, torch.Generator().manual_seed(5)).to(device)
        sae.init_decoder_bias(acts)
        get = lambda s, g: acts[torch.randint(len(acts), (batch,), generator=g).to(device)]  # noqa: E731
        train_sae(sae, objective(), get, TrainConfig(steps=5, lr=1e-3, warmup=0, progress=False))  # warm-up
        sync(device)
        start = time.perf_counter()
        train_sae(sae, objective(), get, TrainConfig(steps=n_steps, lr=1e-3, warmup=0, progress=False))
        sync(device)
        rate = n_steps * batch / (time.perf_counter() - start)
        base = base or rate
        print(f"{name:>22} | {rate:13,.0f} | {rate / base:5.2f}x")


if __name__ == "__main__":
    main()
