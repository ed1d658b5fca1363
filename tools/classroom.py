"""Classroom mode: student notebooks, an instructor's solutions export, and the table of exercises.

    python tools/classroom.py student   [--chapter NN] [--out _build/student]
    python tools/classroom.py solutions [--chapter NN] [--out _build/solutions]
    python tools/classroom.py table      # markdown table of every exercise (the instructor page's)

An exercise (DESIGN.md section 7) is a markdown cell starting ``**Exercise N.M** (topic; difficulty)``,
a code cell whose solution sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, and a check
cell calling ``arlib.checks.<name>(...)``. A student notebook replaces every solution block by
``raise NotImplementedError()`` (at the block's indentation) and clears the outputs of solution and
check cells; every other cell is left as it is.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISE_RE = re.compile(r"^\*\*Exercise (\d+)\.(\d+)\*\* \(([^;()]+); (easy|medium|hard)\)")
CHECK_RE = re.compile(r"\barlib\.checks\.(\w+)\(")


@dataclass
class Exercise:
    chapter: str
    number: str  # "1.2"
    topic: str
    difficulty: str
    check: str  # name of the arlib.checks function
    statement_cell: int
    solution_cell: int
    check_cell: int


def chapter_notebooks(chapter: str | None = None) -> list[Path]:
    book = tomllib.loads((ROOT / "book.toml").read_text())
    paths = [ROOT / ch["notebook"] for part in book["parts"] for ch in part["chapters"]]
    if chapter is not None:
        paths = [p for p in paths if p.name.startswith(f"{chapter}-")]
        if not paths:
            raise SystemExit(f"--chapter: no chapter {chapter!r} in book.toml")
    return paths


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and BEGIN in cell.source


def is_check_cell(cell) -> bool:
    return cell.cell_type == "code" and CHECK_RE.search(cell.source) is not None


def find_exercises(nb, chapter: str = "") -> list[Exercise]:
    """Every exercise of a notebook: its statement, solution and check cells, in order."""
    found = []
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        match = EXERCISE_RE.match(cell.source.lstrip())
        if not match:
            continue
        solution = next((j for j in range(i + 1, len(cells)) if is_solution_cell(cells[j])), None)
        check = next((j for j in range(i + 1, len(cells)) if is_check_cell(cells[j])), None)
        if solution is None or check is None or check < solution:
            raise ValueError(f"{chapter}: exercise {match[1]}.{match[2]} needs a solution cell then a check cell")
        found.append(Exercise(chapter, f"{match[1]}.{match[2]}", match[3].strip(), match[4],
                              CHECK_RE.search(cells[check].source)[1], i, solution, check))
    return found


def strip_solution(source: str) -> str:
    """Replace each BEGIN/END SOLUTION block by ``raise NotImplementedError()`` at its indentation."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested ### BEGIN SOLUTION")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + "raise NotImplementedError()")
        elif stripped == END:
            if not inside:
                raise ValueError("### END SOLUTION without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("### BEGIN SOLUTION without END")
    return "\n".join(out)


def _clear(cell) -> None:
    cell.outputs = []
    cell.execution_count = None


def student_version(nb):
    """A copy of ``nb`` with solutions replaced by stubs and solution/check outputs cleared."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if is_solution_cell(cell):
            cell.source = strip_solution(cell.source)
            _clear(cell)
        elif is_check_cell(cell):
            _clear(cell)
    return nb


def solutions_version(nb, title: str):
    """The exercises only: statement, solution and check of each, for instructors."""
    exercises = find_exercises(nb, title)
    cells = [nbformat.v4.new_markdown_cell(f"# Solutions: {title}")]
    for ex in exercises:
        for index in (ex.statement_cell, ex.solution_cell, ex.check_cell):
            cells.append(copy.deepcopy(nb.cells[index]))
    out = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))
    out.metadata.pop("jupytext", None)
    return out


def exercise_table() -> str:
    rows = ["| chapter | exercise | topic | difficulty | check |", "|---|---|---|---|---|"]
    for path in chapter_notebooks():
        nb = nbformat.read(path, as_version=4)
        for ex in find_exercises(nb, path.stem):
            rows.append(f"| {path.stem} | {ex.number} | {ex.topic} | {ex.difficulty} | `arlib.checks.{ex.check}` |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["student", "solutions", "table"])
    parser.add_argument("--chapter", help="two-digit chapter number, e.g. 01 (default: all)")
    parser.add_argument("--out", help="output folder")
    args = parser.parse_args(argv)
    if args.command == "table":
        print(exercise_table())
        return 0
    out = Path(args.out or ROOT / "_build" / args.command)
    out.mkdir(parents=True, exist_ok=True)
    for path in chapter_notebooks(args.chapter):
        nb = nbformat.read(path, as_version=4)
        if args.command == "student":
            result, name = student_version(nb), path.name
        else:
            result, name = solutions_version(nb, path.stem), f"{path.stem}-solutions.ipynb"
        nbformat.write(result, out / name)
        print(f"{out / name}: {len(find_exercises(nb, path.stem))} exercises")
    return 0


if __name__ == "__main__":
    sys.exit(main())
