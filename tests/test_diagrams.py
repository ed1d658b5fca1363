"""Each chapter's drawn diagram (tools/diagrams.py): valid SVG, committed as drawn, shown in its chapter."""

from __future__ import annotations

import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.diagrams import DIAGRAMS, draw_all  # noqa: E402


def chapter_stems():
    book = tomllib.loads((ROOT / "book.toml").read_text())
    return [Path(ch["notebook"]).stem for part in book["parts"] for ch in part.get("chapters", [])]


def test_committed_diagrams_are_what_the_script_draws(tmp_path):
    (tmp_path / "99-removed.svg").write_text("<svg/>")  # a diagram the script no longer draws: removed
    fresh = draw_all(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in fresh}, "a stale diagram was left behind"
    for path in fresh:
        root = ET.fromstring(path.read_bytes())
        assert root.tag.endswith("svg"), path.name
        assert (root.get("width"), root.get("height")) == ("576pt", "252pt"), f"{path.name}: not 8 x 3.5 inches"
        committed = ROOT / "figures" / "diagrams" / path.name
        assert committed.is_file(), f"{committed} missing: run python tools/diagrams.py"
        assert committed.read_bytes() == path.read_bytes(), f"{committed.name} differs from a fresh drawing"


def test_every_chapter_shows_its_diagram():
    images = re.compile(r"!\[[^\]]+\]\(\.\./\.\./figures/diagrams/([\w-]+\.svg)\)")
    for stem in chapter_stems():
        number = stem[:2]
        names = [n for n in DIAGRAMS if n.startswith(number + "-")]
        assert names, f"chapter {stem} has no diagram in tools/diagrams.py"
        twin = (ROOT / "chapters" / stem / f"{stem}.py").read_text()
        shown = set(images.findall(twin))
        assert {f"{n}.svg" for n in names} <= shown, f"{stem} does not show its diagram {names}"


def test_one_diagram_per_chapter_and_nothing_else():
    """book.toml's chapters and the diagrams match one to one, and figures/diagrams/ holds exactly them."""
    numbers = [stem[:2] for stem in chapter_stems()]
    for number in numbers:
        names = [n for n in DIAGRAMS if n.startswith(number + "-")]
        assert len(names) == 1, f"chapter {number}: expected one diagram in tools/diagrams.py, found {names}"
    assert {n[:2] for n in DIAGRAMS} <= set(numbers), f"a diagram for a chapter book.toml does not list: {DIAGRAMS}"
    committed = {p.name for p in (ROOT / "figures" / "diagrams").iterdir()}
    assert committed == {f"{n}.svg" for n in DIAGRAMS}, "figures/diagrams/: run python tools/diagrams.py"


def test_draw_all_names_a_bad_folder():
    with pytest.raises(ValueError, match="out: expected a folder path"):
        draw_all(3)
    with pytest.raises(ValueError, match="png: expected a folder path or None"):
        draw_all("unused", png=1.5)
