"""Every committed chapter notebook: its jupytext twin agrees with it, it was executed top to bottom in a fresh
kernel without errors, it downloads nothing, and it runs on the standard ``python3`` kernel.

These tests read the committed files only (fast); nbval re-executes the notebooks separately.
"""

from __future__ import annotations

import io
import os
import re
import tokenize
from pathlib import Path

import jupytext
import nbformat
import pytest

from arlib.env import TIMING_NOTICE

REPO = Path(__file__).resolve().parents[1]
# The book under test: the repository, or another root (to test these tests).
ROOT = Path(os.environ.get("BOOK_TEST_ROOT", REPO)).resolve()
CHAPTER_DIR = re.compile(r"^\d\d-[a-z0-9]+(?:-[a-z0-9]+)*$")

NOTEBOOKS = sorted(
    folder / f"{folder.name}.ipynb"
    for folder in (ROOT / "chapters").iterdir()
    if folder.is_dir() and CHAPTER_DIR.match(folder.name) and (folder / f"{folder.name}.ipynb").is_file()
)
IDS = [nb.parent.name for nb in NOTEBOOKS]
FIX = "re-run it top to bottom in a fresh kernel (`make execute`), which also refreshes its twin"

# Calls that fetch something from the network. Data comes from arlib.data loaders and committed checkpoints.
DOWNLOADS = {
    "urllib urlopen": r"\burlopen\s*\(",
    "urllib urlretrieve": r"\burlretrieve\s*\(",
    "urllib.request": r"\burllib\.request\b",
    "http.client": r"\bhttp\.client\b",
    "requests": r"\brequests\.(?:get|post|put|head|request|Session)\b",
    "httpx": r"\bhttpx\.",
    "aiohttp": r"\baiohttp\b",
    "wget": r"\bwget\b",
    "curl": r"\bcurl\b",
    "git clone": r"\bgit\s+clone\b",
    "pip install": r"\bpip\s+install\b",
    "Hugging Face from_pretrained": r"\bfrom_pretrained\s*\(",
    "Hugging Face hub download": r"\b(?:hf_hub_download|snapshot_download)\s*\(",
    "datasets.load_dataset": r"\bload_dataset\s*\(",
    "torch.hub": r"\btorch\.hub\.",
    "download=True": r"\bdownload\s*=\s*True\b",
    "tensorflow_datasets": r"\btfds\.load\s*\(",
}

def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def without_comments(source: str) -> str:
    """The code of a cell without its comments (IPython ``!``/``%`` lines are kept as they are)."""
    lines = source.splitlines(keepends=True)
    magics = [line for line in lines if line.lstrip().startswith(("!", "%"))]
    python = "".join("\n" if line.lstrip().startswith(("!", "%")) else line for line in lines)
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(python).readline) if t.type != tokenize.COMMENT]
        code = tokenize.untokenize(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        code = python
    return code + "".join(magics)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_twin_agrees_with_notebook(path):
    twin = path.with_suffix(".py")
    assert twin.is_file(), f"{twin.name} is missing: jupytext --set-formats ipynb,py:percent {path.name}"
    text = twin.read_text(encoding="utf-8")
    fmt, _ = jupytext.formats.guess_format(text, ".py")
    assert fmt == "percent", f"{twin.name} is in jupytext format {fmt!r}, expected py:percent"
    nb_cells = [(c.cell_type, c.source) for c in read(path).cells]
    py_cells = [(c.cell_type, c.source) for c in jupytext.reads(text, fmt="py:percent").cells]
    for i, (a, b) in enumerate(zip(nb_cells, py_cells, strict=False)):
        assert a == b, (
            f"cell {i} differs between {path.name} and {twin.name} (jupytext --sync, then re-execute):\n"
            f"notebook ({a[0]}):\n{a[1][:800]}\n---\ntwin ({b[0]}):\n{b[1][:800]}"
        )
    assert len(nb_cells) == len(py_cells), (
        f"{path.name} has {len(nb_cells)} cells, {twin.name} {len(py_cells)} (jupytext --sync, then re-execute)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_executed_in_order_without_errors(path):
    nb = read(path)
    cells = [c for c in code_cells(nb) if c.source.strip()]
    assert cells, f"{path.name} has no code"
    for i, cell in enumerate(code_cells(nb)):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", (
                f"{path.name}, code cell {i}: {out.get('ename')}: {out.get('evalue')}\n{cell.source[:500]}"
            )
            text = out.get("text", "") if isinstance(out.get("text", ""), str) else "".join(out["text"])
            assert TIMING_NOTICE not in text, (
                f"{path.name}, code cell {i}: executed with ARLIB_TIMING_ASSERTS=0, so a timing claim went unchecked; "
                f"{FIX} on a quiet machine"
            )
            data = out.get("data", {})
            assert "application/vnd.jupyter.widget-view+json" not in data, (
                f"{path.name}, code cell {i}: a widget output (e.g. tqdm.auto with ipywidgets) does not render in "
                "the offline book; use a text progress bar or disable it"
            )
    counts = [c.execution_count for c in cells]
    assert None not in counts, f"{path.name}: cell {counts.index(None)} of its code cells was not executed; {FIX}"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(cells)}; {FIX}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_downloads_nothing(path):
    found = []
    for i, cell in enumerate(code_cells(read(path))):
        code = without_comments(cell.source)
        found += [f"code cell {i}: {name}" for name, pattern in DOWNLOADS.items() if re.search(pattern, code)]
    assert not found, f"{path.name} fetches from the network; load data with arlib.data instead:\n" + "\n".join(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_kernelspec_is_python3(path):
    meta = read(path).metadata
    kernelspec = meta.get("kernelspec", {})
    assert kernelspec.get("name") == "python3", f"{path.name}: kernelspec {kernelspec!r}, expected name python3"
    assert kernelspec.get("language", "python") == "python"
    assert "widgets" not in meta, f"{path.name} stores widget state, which the offline book cannot render"


def test_download_patterns_catch_downloads_and_ignore_comments():
    def hits(source):
        return [name for name, pattern in DOWNLOADS.items() if re.search(pattern, without_comments(source))]

    assert hits("urllib.request.urlopen('https://x')") == ["urllib urlopen", "urllib.request"]
    assert hits("model = AutoModel.from_pretrained('gpt2')") == ["Hugging Face from_pretrained"]
    assert hits("!wget https://example.org/data.zip") == ["wget"]
    assert hits("%pip install foo") == ["pip install"]
    assert hits("datasets.MNIST(root, download=True)") == ["download=True"]
    assert hits("x = 1  # no wget, no from_pretrained() here\n") == []
    assert hits("corpus = arlib.data.shakespeare()") == []


EXPORT_CALL = re.compile(r"""(?:export_figure\(fig,\s*|\bname=)"([a-z0-9-]+)\"""")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_exported_figures_match_the_chapter(path):
    """figures/<chapter>/ holds, as PNG and SVG, exactly the figures the chapter exports (written by
    `make execute`): a figure the chapter names but the folder lacks means the chapter was not re-executed."""
    twin = path.with_suffix(".py").read_text()
    names = set(EXPORT_CALL.findall(twin))  # a chapter that exports nothing must have no figures/ folder either
    folder = ROOT / "figures" / path.stem
    found = {p.name for p in folder.glob("*")} if folder.is_dir() else set()
    expected = {f"{n}.{ext}" for n in names for ext in ("png", "svg")}
    assert found == expected, (f"{folder.relative_to(ROOT)}: missing {sorted(expected - found)}, "
                               f"stale {sorted(found - expected)}; {FIX}")
    for name in expected:
        head = (folder / name).read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if name.endswith(".png") else b"<svg" in head or b"<?xml" in head, name
