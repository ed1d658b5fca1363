"""How long each chapter takes to execute, against its budget_s in book.toml.

    python benchmarks/book_runtime.py                 # every chapter, in book.toml's order
    python benchmarks/book_runtime.py --chapter 02    # one chapter (repeat --chapter for more)
    python benchmarks/book_runtime.py --keep DIR      # also keep the executed copies in DIR

Each chapter runs with nbclient in a fresh python3 kernel, top to bottom, from a temporary copy of its
notebook: the committed notebook is never modified. The kernel's working directory is the chapter's folder,
as in JupyterLab. The time includes the kernel's start. The table ends with the total; the exit status is 1
when a chapter fails or runs over its budget.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.book import Chapter, ManifestError, load_manifest  # noqa: E402


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _slowest_cell(nb) -> tuple[int, float]:
    """(index among code cells, seconds) of the slowest cell, from nbclient's timing metadata."""
    best = (-1, 0.0)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            seconds = (_when(end) - _when(start)).total_seconds()
            if seconds > best[1]:
                best = (i, seconds)
    return best


def run_chapter(chapter: Chapter, root: Path, workdir: Path, kernel: str = "python3") -> dict:
    """Execute one chapter from a copy in workdir; return its timing and status."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = root / chapter.notebook
    copy = workdir / source.name
    shutil.copyfile(source, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=max(600, int(4 * chapter.budget_s)),  # per cell; the budget is judged on the total
        resources={"metadata": {"path": str(source.parent)}},
        record_timing=True,
    )
    error = ""
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    except Exception as exc:  # a kernel that died, a timeout: report it and go on with the next chapter
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    nbformat.write(nb, copy)
    cell, cell_s = _slowest_cell(nb)
    return {"seconds": seconds, "error": error, "slowest_cell": cell, "slowest_s": cell_s, "executed": copy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapter", action="append", default=[], metavar="NN", help="run only chapter NN (repeatable)")
    parser.add_argument("--root", default=str(ROOT), help="the book's root (holds book.toml)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel to run the chapters in")
    parser.add_argument("--keep", metavar="DIR", help="copy the executed notebooks into DIR")
    args = parser.parse_args(argv)

    try:
        book = load_manifest(args.root)
    except ManifestError as exc:
        print(f"error: book.toml: {exc}", file=sys.stderr)
        return 2
    wanted = {c.zfill(2) for c in args.chapter}
    chapters = [c for c in book.chapters if not wanted or c.number in wanted]
    missing = wanted - {c.number for c in chapters}
    if missing:
        known = ", ".join(c.number for c in book.chapters)
        print(f"error: no chapter {', '.join(sorted(missing))} in book.toml (chapters: {known})", file=sys.stderr)
        return 2

    rows = []
    with tempfile.TemporaryDirectory(prefix="book-runtime-") as tmp:
        for chapter in chapters:
            workdir = Path(tmp) / chapter.number
            workdir.mkdir()
            print(f"running chapter {chapter.number} ({chapter.title}) ...", file=sys.stderr, flush=True)
            result = run_chapter(chapter, book.root, workdir, kernel=args.kernel)
            rows.append((chapter, result))
            if args.keep:
                keep = Path(args.keep)
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(result["executed"], keep / result["executed"].name)

    header = f"{'chapter':<44} {'seconds':>8} {'budget_s':>9}  {'within budget?':<15} slowest code cell"
    print(header)
    print("-" * len(header))
    ok = True
    for chapter, r in rows:
        within = not r["error"] and r["seconds"] <= chapter.budget_s
        ok &= within
        verdict = "FAILED" if r["error"] else ("yes" if within else f"NO (x{r['seconds'] / chapter.budget_s:.2f})")
        slowest = f"#{r['slowest_cell']} {r['slowest_s']:.1f} s" if r["slowest_cell"] >= 0 else "-"
        name = f"{chapter.number} {chapter.title}"[:44]
        print(f"{name:<44} {r['seconds']:>8.1f} {chapter.budget_s:>9.0f}  {verdict:<15} {slowest}")
        if r["error"]:
            print(f"    error: {r['error']}")
    total = sum(r["seconds"] for _, r in rows)
    budget = sum(c.budget_s for c, _ in rows)
    print("-" * len(header))
    print(f"{'total':<44} {total:>8.1f} {budget:>9.0f}  {'yes' if ok else 'NO':<15}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
