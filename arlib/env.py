"""Reproducible setup for every chapter: seeds, device, threads and one plotting style."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from arlib.validate import int_at_least, positive_int

_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "legend.frameon": False,
    "image.cmap": "viridis",
}


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``prefer`` if given, else the best available device: cuda > mps > cpu."""
    if prefer is not None:
        if not isinstance(prefer, str) or prefer.split(":")[0] not in {"cpu", "cuda", "mps"}:
            raise ValueError(f"device: expected 'cpu', 'cuda[:N]' or 'mps', got {prefer!r}")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with one integer."""
    int_at_least(seed, "seed", 0, expected="a non-negative int")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(seed: int = 0, device: str | None = None, threads: int | None = None, style: bool = True) -> torch.device:
    """Prepare a chapter: seed everything, pick the device, set CPU threads, apply the book's plot style.

    Returns the chosen ``torch.device`` (cuda, then mps, then cpu unless ``device`` says otherwise).
    ``threads`` defaults to ``$ARLIB_THREADS`` or the number of CPU cores.
    """
    seed_everything(seed)
    if threads is None:
        threads = int(os.environ.get("ARLIB_THREADS", os.cpu_count() or 1))
    positive_int(threads, "threads")
    torch.set_num_threads(threads)
    if style:
        import matplotlib

        matplotlib.rcParams.update(_STYLE)
    return pick_device(device)


TIMING_NOTICE = "timing claim not enforced here (ARLIB_TIMING_ASSERTS=0)"


def check_timing(ok: bool, message: str) -> None:
    """Assert a claim about wall-clock time (``message`` says what was expected and what came).

    Chapters execute on a quiet machine for the book, where their timing claims are asserted. The test
    suite (``make test``) sets ``ARLIB_TIMING_ASSERTS=0``: there the notebooks share the cores with other
    tests, and speed is never asserted in tests (it is measured in ``benchmarks/``), so a failed claim
    prints a notice instead. The committed outputs must carry no such notice (tests/test_notebooks.py).
    """
    if bool(ok):
        return
    if os.environ.get("ARLIB_TIMING_ASSERTS", "1") == "0":
        print(f"{TIMING_NOTICE}: {message}")
        return
    raise AssertionError(message)
