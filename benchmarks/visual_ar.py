"""Image generation speed and quality on Fashion-MNIST: raster order, raster with speculative Jacobi
decoding (SJD) and LANTERN, and next-scale prediction (VAR, and HMAR's Markovian variant), measured in one
run.

    python benchmarks/visual_ar.py            # 200 images per generator (20 per class), deltas 0.02 0.1
    python benchmarks/visual_ar.py --quick    # 50 images per generator, one delta
    python benchmarks/visual_ar.py --sweep    # images per second against batch size (1 to 256)

Every generator makes the same class-conditional images (classifier-free guidance scale ``--cfg``,
temperature 1) one image at a time (batch size 1, the latency view; SJD's window acceptance is per
image). It prints: forward passes per image, images per second, and two quality scores from the
``fashion-classifier`` checkpoint: the accuracy of its predictions against the requested classes, and
the Fréchet distance between its features of the samples and of as many test images. Speed ratios are
against plain raster sampling in this run; compare ratios across machines, not images per second.

``--sweep`` measures throughput instead: images per second of raster, next-scale (VAR) and MaskGIT
(8 steps) sampling at batch sizes 1, 4, 16, 64 and 256 (guided: twice the rows in every pass), the
generators taking turns, the median of ``--repeats`` timed batches; SJD decides a window per image, so
it runs one image at a time and its rate at batch 1 is the rate at every batch size. The JSON goes to
``data/results/visual-batch-<device>.json`` with the device and date.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from kv_cache import device_name

import arlib
from arlib.data import fashion_mnist
from arlib.vision.generators import sample_next_scale, sample_raster
from arlib.vision.image_metrics import frechet_distance
from arlib.vision.jacobi import lantern_neighbors, sample_raster_sjd
from arlib.vision.maskgit import sample_maskgit
from arlib.vision.recipes import images_as_float

ROOT = Path(__file__).resolve().parents[1]
SWEEP_BATCHES = (1, 4, 16, 64, 256)


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
    parser.add_argument("--sweep", action="store_true", help="images per second against batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per size in --sweep")
    args = parser.parse_args(argv)
    if args.sweep:
        return batch_sweep(args)
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

@torch.no_grad()
def batch_sweep(args) -> dict:
    """Images per second against batch size for each generator (see the module's docstring)."""
    device = arlib.setup(seed=0, device=args.device)
    vq = arlib.load("fashion-vq", device).model
    msvq = arlib.load("fashion-msvq", device).model
    raster = arlib.load("fashion-raster", device).model
    var = arlib.load("fashion-var", device).model
    maskgit = arlib.load("fashion-maskgit", device).model
    K = vq.config.num_codes
    g = torch.Generator(device=device).manual_seed(0)
    generators = {  # decoding to pixels included: it is part of making an image
        "raster": lambda y: vq.decode(sample_raster(raster, y, K, cfg_scale=args.cfg, generator=g)),
        "next-scale (VAR)": lambda y: msvq.decode_latent(
            sample_next_scale(var, msvq.quantizer, y, cfg_scale=args.cfg, generator=g, return_latent=True)[1]),
        "MaskGIT, 8 steps": lambda y: vq.decode(sample_maskgit(maskgit, y, 8, cfg_scale=args.cfg, generator=g)),
    }
    batches = SWEEP_BATCHES[:3] if args.quick else SWEEP_BATCHES
    rates = {name: {} for name in generators}
    for batch in batches:
        labels = torch.arange(batch, device=device) % 10
        for generate in generators.values():  # warm-up at this size
            generate(labels)
        times = {name: [] for name in generators}
        for _ in range(args.repeats):
            for name, generate in generators.items():  # in turns: a machine that drifts drifts for all
                sync(device)
                start = time.perf_counter()
                generate(labels)
                sync(device)
                times[name].append(time.perf_counter() - start)
        for name in generators:
            rates[name][batch] = batch / statistics.median(times[name])
        print(f"batch {batch:>4}: " + ", ".join(f"{name} {rates[name][batch]:8.1f} images/s" for name in generators),
              flush=True)
    sjd_seconds = []
    for y in range(10):
        sync(device)
        start = time.perf_counter()
        sample_raster_sjd(raster, y, K, window=args.window, cfg_scale=args.cfg, generator=g)
        sync(device)
        sjd_seconds.append(time.perf_counter() - start)
    rates["raster + SJD"] = dict.fromkeys(batches, 1 / statistics.median(sjd_seconds))
    print(f"raster + SJD (one image at a time): {rates['raster + SJD'][1]:.1f} images/s at every batch size")
    result = {"device": device.type, "device_name": device_name(device.type),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cfg": args.cfg, "repeats": args.repeats,
              "images_per_second": {name: {str(b): round(r, 3) for b, r in by.items()} for name, by in rates.items()}}
    if not args.quick:
        out = ROOT / "data" / "results" / f"visual-batch-{device.type}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
