"""The grader's per-exercise specs (one module per chapter) and the out-of-process grading they drive.

Each module ``chNN`` lists the :class:`~tools.grading.core.Spec` of every exercise of chapter NN: the learner's
function names, the references to trap, a generator of held-out cases and the comparison. The cases are drawn
at grade time from a seed derived from the student, so they are stored nowhere a learner can read them.
"""

from __future__ import annotations

import importlib

from tools.grading.core import Case, Spec, Verdict, make_cases, seed_for

CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "07")


def specs(chapter: str) -> list[Spec]:
    """The specs of chapter ``chapter`` (two digits), in exercise order."""
    if chapter not in CHAPTERS:
        raise ValueError(f"chapter: no grading specs for chapter {chapter!r}; there are {', '.join(CHAPTERS)}")
    return list(importlib.import_module(f"tools.grading.ch{chapter}").SPECS)


def all_specs() -> dict[str, Spec]:
    """Every spec, by exercise number."""
    return {spec.number: spec for chapter in CHAPTERS for spec in specs(chapter)}


__all__ = ["CHAPTERS", "Case", "Spec", "Verdict", "all_specs", "make_cases", "seed_for", "specs"]
