"""Re-run chapters and refresh their committed outputs and jupytext twins.

    python tools/execute.py              # every chapter in book.toml
    python tools/execute.py --chapter 01 # one chapter

The py:percent twin is the file to edit: when it is newer than the notebook, its cells are synced into
the notebook first (jupytext keeps outputs of unchanged cells, so the notebook is then re-executed).
After execution the twin is rewritten from the notebook so the two always agree. The figures a chapter
exports with ``arlib.export_figure`` are written to ``figures/<chapter>/`` (PNG and SVG).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
FIGURES_ENV = "ARLIB_FIGURES_DIR"  # read by arlib.env.export_figure in the chapter's kernel


def chapter_notebooks(chapter: str | None = None) -> list[Path]:
    book = tomllib.loads((ROOT / "book.toml").read_text())
    # Read book.toml directly, not through tools/book.py, which demands that each notebook exist: a new chapter
    # has only its twin until it is executed here. Parts of markdown pages (no chapters) are skipped.
    paths = [ROOT / ch["notebook"] for part in book["parts"] for ch in part.get("chapters", [])]
    if chapter is not None:
        paths = [p for p in paths if p.name.startswith(f"{chapter}-")]
        if not paths:
            raise SystemExit(f"--chapter: no chapter {chapter!r} in book.toml")
    return paths


def sync_from_twin(notebook: Path) -> nbformat.NotebookNode:
    """The notebook, with its cells replaced by the twin's when the twin was edited more recently."""
    twin = notebook.with_suffix(".py")
    if notebook.exists() and (not twin.exists() or twin.stat().st_mtime <= notebook.stat().st_mtime):
        return nbformat.read(notebook, as_version=4)
    if not twin.exists():
        raise SystemExit(f"{notebook}: neither the notebook nor its twin {twin.name} exists")
    fresh = jupytext.read(twin)
    fresh.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    fresh.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    return fresh


def execute(notebook: Path, timeout: int = 1800) -> float:
    nb = sync_from_twin(notebook)
    # The chapter's key figures (arlib.export_figure) go to figures/<chapter>/; the folder is emptied first
    # so a figure the chapter no longer draws does not linger.
    figures = ROOT / "figures" / notebook.stem
    for old in figures.glob("*.png"):
        old.unlink()
    for old in figures.glob("*.svg"):
        old.unlink()
    os.environ[FIGURES_ENV] = str(figures)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, notebook)
    jupytext.write(nb, notebook.with_suffix(".py"), fmt="py:percent")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", help="two-digit chapter number, e.g. 01")
    args = parser.parse_args(argv)
    for notebook in chapter_notebooks(args.chapter):
        print(f"executing {notebook.relative_to(ROOT)} ...", flush=True)
        print(f"  done in {execute(notebook):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
