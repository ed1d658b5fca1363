"""Chapter 4's evaluation of every image generator against its tokenizer's floor, with intervals.

    python benchmarks/visual_eval.py                 # 1000 samples per generator (100 per class)
    python benchmarks/visual_eval.py --quick         # 200 per generator, 50 bootstrap draws (a smoke run)

Every generator draws the same class-conditional set (classifier-free guidance ``--cfg``, temperature 1).
The ``fashion-classifier`` checkpoint scores each set against the features of 1000 held-out test images
(test[0:1000]): class-consistency accuracy (overall and per class), Fréchet distance, KID, precision and
recall (k = 3), each with a bootstrap interval (:func:`arlib.vision.sample_quality.score_samples`; the
reference resampled alike for every row, so differences pair). The floors are scored the same way: other
real test images (test[1000:2000]), and each tokenizer's reconstructions of those images, the best a
model over that tokenizer's codes can do. A memorization check gives each image's pixel distance to
its nearest training image, beside the same for held-out test images.

The results go to ``data/results/visual-eval-<device>.json`` (``--out`` to change), with the device and
date; chapter 4 reads them. Sampling is batched (SJD and the relaxed test: one image at a time).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from kv_cache import device_name

import arlib
from arlib.data import fashion_mnist
from arlib.vision.generators import sample_next_scale, sample_raster
from arlib.vision.hmar import sample_hmar
from arlib.vision.jacobi import lantern_neighbors, sample_raster_sjd
from arlib.vision.lantern import sample_raster_lantern
from arlib.vision.maskgit import sample_maskgit
from arlib.vision.recipes import images_as_float
from arlib.vision.sample_quality import nearest_distances, score_samples

ROOT = Path(__file__).resolve().parents[1]


def sync(device) -> None:
    """Wait for the accelerator before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize()


LANTERN_GAMMA, LANTERN_K, LANTERN_DELTAS = 4, 8, (0.05, 0.1, 0.2)  # drafts per pass, neighbours searched, budgets


def _round(x, digits=5):
    return float(f"{x:.{digits}g}")


@torch.no_grad()
def classify(classifier, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 64), predicted classes (N,)) of images (N, 1, 28, 28)."""
    feats, preds = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        f = classifier.features(x)
        feats.append(f.cpu())
        preds.append(classifier.out(f).argmax(-1).cpu())
    return torch.cat(feats), torch.cat(preds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--boots", type=int, default=200, help="bootstrap draws")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--out", default=None, help="the JSON file (default data/results/visual-eval-<device>.json)")
    args = parser.parse_args(argv)
    per_class, boots = (20, 50) if args.quick else (100, args.boots)
    device = arlib.setup(seed=0, device=args.device)
    names = ["fashion-vq", "fashion-msvq", "fashion-fsq", "fashion-raster", "fashion-raster-draft", "fashion-var",
             "fashion-var-markov", "fashion-hmar", "fashion-maskgit", "fashion-classifier"]
    models = {name: arlib.load(name, device).model for name in names}
    vq, msvq, fsq, classifier = (models[n] for n in ("fashion-vq", "fashion-msvq", "fashion-fsq", "fashion-classifier"))
    K = vq.config.num_codes
    n = 10 * per_class
    test_images, test_labels = fashion_mnist("test")
    train_images, _ = fashion_mnist("train")
    reference, _ = classify(classifier, images_as_float(test_images[:1000]).to(device))
    held_out = images_as_float(test_images[1000:1000 + n]).to(device)
    held_labels = test_labels[1000:1000 + n].to(device)
    labels = torch.arange(10, device=device).repeat_interleave(per_class)  # (n,)
    train_bank = images_as_float(train_images).flatten(1).double()  # (60000, 784): the memorization check's bank
    neighbors = lantern_neighbors(vq.quantizer.codebook, 32)
    lantern_table = lantern_neighbors(vq.quantizer.codebook, LANTERN_K + 2)

    def batched(sample, batch=250):
        def run(g):
            return torch.cat([sample(labels[i:i + batch], g) for i in range(0, n, batch)]), None
        return run

    def one_by_one(drafter=False, **kw):
        def run(g):
            images, passes = [], []
            draft_steps.setdefault(id(run), [])
            for y in labels.tolist():
                if drafter:
                    grid, info = sample_raster_lantern(models["fashion-raster"], models["fashion-raster-draft"], y, K,
                                                       gamma=LANTERN_GAMMA, cfg_scale=args.cfg, generator=g, **kw)
                else:
                    grid, info = sample_raster_sjd(models["fashion-raster"], y, K, cfg_scale=args.cfg, generator=g,
                                                   **kw)
                images.append(vq.decode(grid[None]))
                passes.append(info["passes"])
                draft_steps[id(run)].append(info.get("draft_steps", 0))
            return torch.cat(images), passes
        return run

    def hmar(schedule):
        def sample(y, g):
            _, f_hat = sample_hmar(models["fashion-hmar"], msvq.quantizer, y, schedule, cfg_scale=args.cfg, generator=g,
                                   return_latent=True)
            return msvq.decode_latent(f_hat)
        return batched(sample)

    def next_scale(name):
        def sample(y, g):
            _, f_hat = sample_next_scale(models[name], msvq.quantizer, y, cfg_scale=args.cfg, generator=g,
                                         return_latent=True)
            return msvq.decode_latent(f_hat)
        return batched(sample)

    floors = {
        "test images": (held_out, held_labels, None),
        "fashion-vq reconstructions": (vq(held_out)[0], held_labels, "fashion-vq"),
        "fashion-msvq reconstructions": (msvq(held_out)[0], held_labels, "fashion-msvq"),
        "fashion-fsq reconstructions": (fsq(held_out)[0], held_labels, "fashion-fsq"),
    }
    generators = {  # name: (sampler, tokenizer, forward passes per image when fixed)
        "raster": (batched(lambda y, g: vq.decode(sample_raster(models["fashion-raster"], y, K, cfg_scale=args.cfg,
                                                                    generator=g))), "fashion-vq", 49),
        "raster + SJD": (one_by_one(), "fashion-vq", None),
        "raster + SJD, relaxed test on uniform drafts (delta 0.1)": (
            one_by_one(neighbors=neighbors, delta=0.1), "fashion-vq", None),
        "raster + speculative sampling, drafter (LANTERN delta 0)": (one_by_one(True), "fashion-vq", None),
        **{f"raster + LANTERN, drafter, delta {d}": (one_by_one(True, neighbors=lantern_table, delta=d, k=LANTERN_K),
                                                     "fashion-vq", None) for d in LANTERN_DELTAS},
        "MaskGIT, 8 steps": (batched(lambda y, g: vq.decode(sample_maskgit(models["fashion-maskgit"], y, 8,
                                                                             cfg_scale=args.cfg, generator=g))),
                             "fashion-vq", 8),
        "next-scale (VAR)": (next_scale("fashion-var"), "fashion-msvq", 5),
        "next-scale, Markov mask (previous scale and class)": (next_scale("fashion-var-markov"), "fashion-msvq", 5),
        "HMAR, next-scale steps only": (hmar(tuple((s * s,) for s in msvq.quantizer.scales)), "fashion-msvq", 5),
        "HMAR, with masked steps": (hmar(None), "fashion-msvq", 9),
    }
    rows, draft_steps = {}, {}  # drafter steps per image, by sampler (LANTERN's rows)
    train_distance_of_test = nearest_distances(held_out.flatten(1).cpu(), train_bank)
    threshold = float(train_distance_of_test.quantile(0.01))  # closer than 99 % of held-out images are

    def record(name, images, row_labels, tokenizer, kind, passes=None, seconds=None):
        features, predictions = classify(classifier, images)
        scores = score_samples(features, predictions, row_labels.cpu(), reference, boots=boots, seed=0)
        distances = nearest_distances(images.flatten(1).cpu(), train_bank)
        row = {"kind": kind, "tokenizer": tokenizer, "n": len(images),
               "per_class": [_round(a, 4) for a in scores.pop("per_class")],
               "nearest_train_median": _round(float(distances.median()), 4),
               "share_closer_than_test_p1": _round(float((distances < threshold).double().mean()), 4)}
        for metric, s in scores.items():
            row[metric] = {"value": _round(s["value"]), "low": _round(s["low"]), "high": _round(s["high"]),
                           "replicates": [_round(r, 4) for r in s["replicates"]]}
        if passes is not None:
            row["passes_mean"] = _round(sum(passes) / len(passes), 4)
            row["passes_histogram"] = torch.bincount(torch.tensor(passes)).tolist()
        if seconds is not None:
            row["seconds"] = _round(seconds, 4)
        rows[name] = row
        print(f"{name:>58} | acc {row['accuracy']['value']:.3f} | FD {row['frechet']['value']:6.2f} "
              f"[{row['frechet']['low']:5.2f}, {row['frechet']['high']:5.2f}] | "
              f"KID {1000 * row['kid']['value']:6.2f}e-3 | "
              f"P {row['precision']['value']:.3f} R {row['recall']['value']:.3f} | nearest train "
              f"{row['nearest_train_median']:.2f}", flush=True)

    with torch.no_grad():
        for name, (images, row_labels, tokenizer) in floors.items():
            record(name, images, row_labels, tokenizer, "floor")
        for seed, (name, (run, tokenizer, fixed_passes)) in enumerate(generators.items()):
            g = torch.Generator(device=device).manual_seed(100 + seed)
            sync(device)
            start = time.perf_counter()
            images, passes = run(g)
            sync(device)
            seconds = time.perf_counter() - start
            passes = passes if passes is not None else [fixed_passes] * n
            record(name, images, labels, tokenizer, "generator", passes, seconds)
            if any(draft_steps.get(id(run), [])):
                rows[name]["draft_steps_mean"] = _round(sum(draft_steps[id(run)]) / n, 4)
    result = {"device": device.type, "device_name": device_name(device.type),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cfg": args.cfg, "per_class": per_class, "boots": boots,
              "lantern": {"gamma": LANTERN_GAMMA, "k": LANTERN_K, "deltas": list(LANTERN_DELTAS)},
              "reference": "test[0:1000]", "floor_images": f"test[1000:{1000 + n}]",
              "nearest_train_threshold": _round(threshold, 4),
              "nearest_train_median_of_test": _round(float(train_distance_of_test.median()), 4),
              "rows": rows}
    out = Path(args.out) if args.out else ROOT / "data" / "results" / f"visual-eval-{device.type}.json"
    if not args.quick or args.out:
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
