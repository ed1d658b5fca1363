"""Reproducible setup for every chapter: seeds, device, threads and one plotting style."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from arlib.validate import int_in_range, positive_int

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
    """Return ``prefer`` if given (a name or a ``torch.device``; it must be available here, else
    ``ValueError``), else the best available device: cuda > mps > cpu."""
    if prefer is not None:
        if isinstance(prefer, torch.device):
            prefer = str(prefer)
        if not isinstance(prefer, str) or prefer.split(":")[0] not in {"cpu", "cuda", "mps"}:
            raise ValueError(f"device: expected 'cpu', 'cuda[:N]' or 'mps', got {prefer!r}")
        try:
            device = torch.device(prefer)
        except RuntimeError:
            raise ValueError(f"device: expected 'cpu', 'cuda[:N]' or 'mps', got {prefer!r}") from None
        mps = getattr(torch.backends, "mps", None)
        if device.type == "cuda" and not (torch.cuda.is_available()
                                          and (device.index or 0) < torch.cuda.device_count()):
            raise ValueError(f"device: {prefer!r} is not available here ({torch.cuda.device_count()} CUDA devices)")
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(f"device: {prefer!r} is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with one integer in [0, 2**64)."""
    seed = int_in_range(seed, "seed", 0, 2**64 - 1, expected="a non-negative int below 2**64")
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
        env = os.environ.get("ARLIB_THREADS")
        try:
            threads = int(env) if env else os.cpu_count() or 1
        except ValueError:
            raise ValueError(f"threads: $ARLIB_THREADS must be a positive int, got {env!r}") from None
    threads = positive_int(threads, "threads")
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
    if not isinstance(message, str):
        raise TypeError(f"message: expected a string, got {type(message).__name__}")
    try:
        ok = bool(ok)
    except (RuntimeError, ValueError, TypeError):  # a tensor or array of several entries
        raise TypeError(f"ok: expected a truth value, got {type(ok).__name__} of several entries") from None
    if ok:
        return
    if os.environ.get("ARLIB_TIMING_ASSERTS", "1") == "0":
        print(f"{TIMING_NOTICE}: {message}")
        return
    raise AssertionError(message)


FIGURES_ENV = "ARLIB_FIGURES_DIR"


def export_figure(fig, name: str, directory: str | os.PathLike | None = None) -> list:
    """Write ``fig`` as ``name.png`` and ``name.svg`` for the repository's ``figures/`` folder.

    ``make execute`` sets ``$ARLIB_FIGURES_DIR`` to ``figures/<chapter>/`` while it runs a chapter, so
    each chapter's key figures land there; anywhere else (a reader's run, the test suite) the call writes
    nothing unless ``directory`` is given. The files are byte-stable across runs (no date in the SVG or
    PNG metadata, a fixed SVG id salt), so re-executing a chapter changes them only when the figure changes.
    Returns the paths written (empty when nothing was).
    """
    from pathlib import Path

    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig: expected a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\. ") or name.startswith("-"):
        raise ValueError(f"name: expected a file stem such as 'learning-curve' (no dots, slashes or spaces), "
                         f"got {name!r}")
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory: expected a path, got {type(directory).__name__}")
    target = directory if directory is not None else os.environ.get(FIGURES_ENV)
    if not target:
        return []
    import matplotlib

    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    with matplotlib.rc_context({"svg.hashsalt": "arlib", "svg.fonttype": "path"}):
        fig.savefig(paths[0], metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    return paths
