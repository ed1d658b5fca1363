"""Image generation speed and quality on Fashion-MNIST: raster order, raster with speculative Jacobi
decoding (SJD) and LANTERN, and next-scale prediction (VAR, and HMAR's Markovian variant), measured in one
run.

    python benchmarks/visual_ar.py            # 200 images per generator (20 per class), deltas 0.02 0.1
    python benchmarks/visual_ar.py --quick    # 50 images per generator, one delta

Every generator makes the same class-conditional images (classifier-free guidance scale ``--cfg``,
temperature 1) one image at a time (batch size 1, the latency view; SJD's window acceptance is per
image). It prints: forward passes per image, images per second, and two quality scores from the
``fashion-classifier`` checkpoint: the accuracy of its predictions against the requested classes, and
the Fréchet distance between its features of the samples and of as many test images. Speed ratios are
against plain raster sampling in this run; compare ratios across machines, not images per second.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import arlib
from arlib.data import fashion_mnist
from arlib.vision.generators import sample_next_scale, sample_raster
from arlib.vision.image_metrics import frechet_distance
from arlib.vision.jacobi import lantern_neighbors, sample_raster_sjd
from arlib.vision.recipes import images_as_float


def sync(device) -> None:
    """Wait for the accelerator before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def score(classifier, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(class-consistency accuracy, Fréchet distance to the reference features)."""
    accuracy = (classifier(images).argmax(-1) == labels).float().mean().item()
    return accuracy, frechet_distance(classifier.features(images), reference)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--window", type=int, default=8, help="SJD window")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    args = parser.parse_args(argv)
    per_class, deltas = (5, [0.1]) if args.quick else (20, [0.02, 0.1])
    device = arlib.setup(seed=0, device=args.device)  # the chapter's thread count (both cores): numbers compare
    vq = arlib.load("fashion-vq", device).model
    msvq = arlib.load("fashion-msvq", device).model
    raster = arlib.load("fashion-raster", device).model
    var = arlib.load("fashion-var", device).model
    var_markov = arlib.load("fashion-var-markov", device).model
    classifier = arlib.load("fashion-classifier", device).model
    K = vq.config.num_codes
    labels = torch.arange(10, device=device).repeat_interleave(per_class)  # (N,)
    test_images, _ = fashion_mnist("test")
    reference = classifier.features(images_as_float(test_images[:len(labels)]).to(device))
    neighbors = lantern_neighbors(vq.quantizer.codebook, 32)
    def raster_images(grid):  # (1, 7, 7) or (7, 7) token grid -> (1, 1, 28, 28)
        return vq.decode(grid.view(1, 7, 7))

    def sjd(y, g, **lantern):
        grid, info = sample_raster_sjd(raster, int(y), K, window=args.window, cfg_scale=args.cfg, generator=g,
                                       **lantern)
        return raster_images(grid), info["passes"]

    def next_scale(model):  # the sampler builds f_hat as it goes; the decoder takes it directly
        def generate(y, g):
            _, f_hat = sample_next_scale(model, msvq.quantizer, y[None], cfg_scale=args.cfg, generator=g,
                                         return_latent=True)
            return msvq.decode_latent(f_hat), len(model.scales)
        return generate

    generators = {
        "raster": lambda y, g: (raster_images(sample_raster(raster, y[None], K, cfg_scale=args.cfg, generator=g)),
                                49),
        "raster + SJD": sjd,
    }
    for delta in deltas:
        generators[f"raster + LANTERN d={delta}"] = (
            lambda y, g, d=delta: sjd(y, g, neighbors=neighbors, delta=d))
    generators["next-scale (VAR)"] = next_scale(var)
    generators["next-scale, Markov (HMAR)"] = next_scale(var_markov)
    print(f"{len(labels)} images per generator on {device}, cfg {args.cfg}, batch size 1; the generators take "
          f"turns image by image, so that a machine that speeds up or slows down affects them all alike")
    streams = {name: torch.Generator(device=device).manual_seed(0) for name in generators}
    seconds = dict.fromkeys(generators, 0.0)
    images = {name: [] for name in generators}
    passes = {name: [] for name in generators}
    for generate in generators.values():  # warm-up: CUDA kernels load lazily
        generate(labels[0], torch.Generator(device=device).manual_seed(1))
    for y in labels:
        for name, generate in generators.items():
            sync(device)
            start = time.perf_counter()
            image, n_passes = generate(y, streams[name])
            sync(device)
            seconds[name] += time.perf_counter() - start
            images[name].append(image)
            passes[name].append(n_passes)
    print(f"{'generator':>26} | {'passes/image':>12} | {'images/s':>8} | {'speed-up':>8} | {'accuracy':>8} | "
          f"{'Frechet':>8}")
    base = len(labels) / seconds["raster"]
    for name in generators:
        rate = len(labels) / seconds[name]
        accuracy, fd = score(classifier, torch.cat(images[name]), labels, reference)
        print(f"{name:>26} | {statistics.fmean(passes[name]):12.1f} | {rate:8.1f} | {rate / base:7.2f}x | "
              f"{accuracy:8.3f} | {fd:8.2f}")

if __name__ == "__main__":
    main()
