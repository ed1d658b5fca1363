"""Each chapter's drawn diagram (tools/diagrams.py): valid SVG, committed as drawn, shown in its chapter."""

from __future__ import annotations

import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.diagrams import DIAGRAMS, draw_all  # noqa: E402


def chapter_stems():
    book = tomllib.loads((ROOT / "book.toml").read_text())
    return [Path(ch["notebook"]).stem for part in book["parts"] for ch in part.get("chapters", [])]


def test_committed_diagrams_are_what_the_script_draws(tmp_path):
    fresh = draw_all(tmp_path)
    for path in fresh:
        root = ET.fromstring(path.read_bytes())
        assert root.tag.endswith("svg"), path.name
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
