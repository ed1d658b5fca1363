"""Image generation speed and quality on Fashion-MNIST: raster order, raster with speculative Jacobi
decoding (SJD) and LANTERN, and next-scale prediction (VAR), measured in one run.

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
import time

import torch

import arlib
from arlib.data import fashion_mnist
from arlib.jacobi import lantern_neighbors, sample_raster_sjd
from arlib.metrics import frechet_distance
from arlib.visual_ar import sample_next_scale, sample_raster
from arlib.visual_recipes import images_as_float, load_visual


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
    vq, _ = load_visual("fashion-vq", device)
    msvq, _ = load_visual("fashion-msvq", device)
    raster, _ = load_visual("fashion-raster", device)
    var, _ = load_visual("fashion-var", device)
    var_markov, _ = load_visual("fashion-var-markov", device)
    classifier, _ = load_visual("fashion-classifier", device)
    K = vq.config.num_codes
    labels = torch.arange(10, device=device).repeat_interleave(per_class)  # (N,)
    test_images, _ = fashion_mnist("test")
    reference = classifier.features(images_as_float(test_images[:len(labels)]).to(device))
    neighbors = lantern_neighbors(vq.quantizer.codebook, 32)
    generators = {
        "raster": lambda y, g: (sample_raster(raster, y[None], K, cfg_scale=args.cfg, generator=g)[0], 49),
        "raster + SJD": lambda y, g: sample_raster_sjd(raster, int(y), K, window=args.window, cfg_scale=args.cfg,
                                                      generator=g),
    }
    for delta in deltas:
        generators[f"raster + LANTERN d={delta}"] = (
            lambda y, g, d=delta: sample_raster_sjd(raster, int(y), K, window=args.window, cfg_scale=args.cfg,
                                                    neighbors=neighbors, delta=d, generator=g))
    generators["next-scale (VAR)"] = lambda y, g: (sample_next_scale(var, msvq.quantizer, y[None], cfg_scale=args.cfg,
                                                                     generator=g), 5)
    generators["next-scale, Markov (HMAR)"] = lambda y, g: (
        sample_next_scale(var_markov, msvq.quantizer, y[None], cfg_scale=args.cfg, generator=g), 5)
    print(f"{len(labels)} images per generator on {device}, cfg {args.cfg}, batch size 1")
    print(f"{'generator':>26} | {'passes/image':>12} | {'images/s':>8} | {'speed-up':>8} | {'accuracy':>8} | "
          f"{'Frechet':>8}")
    base = None
    for name, generate in generators.items():
        g = torch.Generator(device=device).manual_seed(0)
        images, passes = [], []
        warm = generate(labels[0], torch.Generator(device=device).manual_seed(1))  # CUDA kernels load lazily
        del warm
        sync(device)
        start = time.perf_counter()
        for y in labels:
            out, info = generate(y, g)
            if name.startswith("next-scale"):
                images.append(msvq.decode(out))
            else:
                images.append(vq.decode(out.view(1, 7, 7)))
            passes.append(info if isinstance(info, int) else info["passes"])
        sync(device)
        seconds = time.perf_counter() - start
        rate = len(labels) / seconds
        base = base or rate
        accuracy, fd = score(classifier, torch.cat(images), labels, reference)
        print(f"{name:>26} | {sum(passes) / len(passes):12.1f} | {rate:8.1f} | {rate / base:7.2f}x | "
              f"{accuracy:8.3f} | {fd:8.2f}")


if __name__ == "__main__":
    main()
