"""Classroom mode: student notebooks, an instructor's solutions export, and the table of exercises.

    python tools/classroom.py student    [--chapter NN] [--out _build/student] [--notebook chapter|exercises]
    python tools/classroom.py instructor [--chapter NN] [--out _build/instructor] [--notebook exercises|chapter]
    python tools/classroom.py solutions [--chapter NN] [--out _build/solutions]
    python tools/classroom.py table              # print the table of exercises (markdown)
    python tools/classroom.py table --write      # refresh it in chapters/instructors.md, between its markers
    python tools/classroom.py table --check      # exit 1 if chapters/instructors.md is out of date
    python tools/classroom.py grade NB.ipynb ... [--student ID]  # grade learners' notebooks on held-out cases

An exercise (the format the book's page "For instructors" describes) is a markdown cell whose first
line, or the first line of one of its
paragraphs, starts ``**Exercise N.M** (topic; easy|medium|hard)``; then a code cell whose solution sits
between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; then a check cell calling ``arlib.checks.<name>(...)``.
The first exercise may share its cell with the chapter's ``## Exercises`` heading. Exercises come after that
heading and use only what the chapter's first code cell (imports and setup) defines, so they run on their own.

A student notebook replaces every solution block by ``raise NotImplementedError()`` (at the block's
indentation), clears the outputs of solution and check cells and replaces each cell tagged ``remove-in-student``
(one that shows an exercise's solution elsewhere in the chapter) by a short note; every other cell keeps its text
and outputs. Student and instructor notebooks carry nbgrader's cell metadata (schema 3): solution cells are
autograded answers, check cells autograded tests, every other cell is read-only. An instructor notebook is the
source that ``nbgrader generate_assignment`` takes (solutions and markers kept), one folder per chapter.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/classroom.py`
    sys.path.insert(0, str(ROOT))

from tools import book as manifest  # noqa: E402

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DIFFICULTIES = ("easy", "medium", "hard")
EXERCISE_RE = re.compile(r"^\*\*Exercise (\d+)\.(\d+)\*\* \(([^;()]+); (easy|medium|hard)\)", re.MULTILINE)
HEADER_START_RE = re.compile(r"^\*\*Exercise\b.*$", re.MULTILINE)  # anything that looks like a header
HEADING_RE = re.compile(r"^## Exercises\s*$", re.MULTILINE)
CHECK_RE = re.compile(r"\barlib\.checks\.(\w+)\(")
INSTRUCTORS = "chapters/instructors.md"
TABLE_START, TABLE_END = "<!-- exercise-table:start -->", "<!-- exercise-table:end -->"
POINTS = {"easy": 1, "medium": 2, "hard": 3}  # nbgrader points of an exercise's check
REMOVE_TAG = "remove-in-student"  # a cell elsewhere in the chapter that shows an exercise's solution
REMOVED_NOTE = ("*A cell that showed the solution of an exercise was removed from the student version of "
                "this notebook.*")


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


def chapters(chapter: str | None = None, root: Path = ROOT) -> list[manifest.Chapter]:
    """The chapters listed in book.toml, or the one numbered ``chapter`` (two digits, e.g. "01")."""
    found = manifest.load_manifest(root).chapters
    if chapter is not None:
        found = [ch for ch in found if ch.number == chapter]
        if not found:
            raise SystemExit(f"--chapter: no chapter {chapter!r} in book.toml")
    return found


def chapter_notebooks(chapter: str | None = None, root: Path = ROOT) -> list[Path]:
    return [root / ch.notebook for ch in chapters(chapter, root)]


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and BEGIN in cell.source


def is_check_cell(cell) -> bool:
    return cell.cell_type == "code" and CHECK_RE.search(cell.source) is not None


def exercises_heading(nb) -> int | None:
    """Index of the markdown cell holding the ``## Exercises`` heading, or None."""
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and HEADING_RE.search(c.source)),
                None)


def find_exercises(nb, chapter: str = "", strict: bool = True) -> list[Exercise]:
    """Every exercise of a notebook: its statement, solution and check cells, in order.

    The solution cell is the first code cell after the statement holding ``### BEGIN SOLUTION``, the check cell
    the first that calls ``arlib.checks``. With ``strict=False`` (a learner's notebook: the markers are gone and a
    check may have been edited) the solution is the first code cell that is not a check, and the check, if
    none calls ``arlib.checks``, the next code cell.

    Raises ValueError for a malformed header, a header before the ``## Exercises`` heading, two headers in one
    cell, or an exercise without a solution cell followed by a check cell (before the next exercise).
    """
    cells = nb.cells
    headers: list[tuple[int, re.Match]] = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        for line in HEADER_START_RE.findall(cell.source):
            if not EXERCISE_RE.match(line):
                raise ValueError(f"{chapter}: cell {i}: malformed exercise header {line[:80]!r}; write "
                                 "**Exercise N.M** (topic; easy|medium|hard)")
        matches = list(EXERCISE_RE.finditer(cell.source))
        if len(matches) > 1:
            raise ValueError(f"{chapter}: cell {i} holds {len(matches)} exercise headers; give each its own cell")
        if matches:
            headers.append((i, matches[0]))
    heading = exercises_heading(nb)
    if headers and (heading is None or headers[0][0] < heading):
        raise ValueError(f"{chapter}: exercise {headers[0][1][1]}.{headers[0][1][2]} comes before the "
                         "'## Exercises' heading; exercises belong in the chapter's Exercises section")
    found = []
    for k, (i, match) in enumerate(headers):
        number = f"{match[1]}.{match[2]}"
        stop = headers[k + 1][0] if k + 1 < len(headers) else len(cells)
        answers = is_solution_cell if strict else (lambda c: c.cell_type == "code" and not is_check_cell(c))
        solution = next((j for j in range(i + 1, stop) if answers(cells[j])), None)
        check = next((j for j in range(i + 1, stop) if is_check_cell(cells[j])), None)
        if check is None and solution is not None and not strict:
            check = next((j for j in range(solution + 1, stop) if cells[j].cell_type == "code"), None)
        if solution is None or check is None or check < solution:
            raise ValueError(f"{chapter}: exercise {number} needs a solution cell then a check cell")
        called = CHECK_RE.search(cells[check].source)
        found.append(Exercise(chapter, number, match[3].strip(), match[4], called[1] if called else "",
                              i, solution, check))
    return found


def exercises_only(nb):
    """The chapter's first code cell (imports and setup) and every cell from the ``## Exercises`` heading on.

    Exercises depend on nothing else, so this notebook runs them on their own (the classroom tests do).
    """
    heading = exercises_heading(nb)
    if heading is None:
        raise ValueError("the notebook has no '## Exercises' heading")
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    cells = [copy.deepcopy(nb.cells[first])] + copy.deepcopy(nb.cells[heading:])
    return nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))


def run_exercises(nb, cwd: Path | str, timeout: int = 600, env: dict | None = None):
    """Execute :func:`exercises_only` of ``nb`` in a fresh ``python3`` kernel and return the executed notebook.

    Errors do not stop the run (``allow_errors``): every check cell runs and records its own outcome.
    """
    from nbclient import NotebookClient

    run = exercises_only(nb)
    client = NotebookClient(run, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(**({"env": env} if env is not None else {}))
    return run


@dataclass
class Result:
    number: str
    status: str  # "pass", "not yet implemented", "fail", "not run"
    message: str


def results(executed) -> list[Result]:
    """The outcome of every exercise in a notebook that ran (see :func:`run_exercises`), from its check cells."""
    out = []
    for ex in find_exercises(executed, strict=False):
        outputs = executed.cells[ex.check_cell].get("outputs", [])
        errors = [o for o in outputs if o.output_type == "error"]
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        if errors:
            message = f"{errors[0].ename}: {errors[0].evalue}"
            stub = errors[0].ename == "CheckFailed" and "not yet implemented" in errors[0].evalue
            out.append(Result(ex.number, "not yet implemented" if stub else "fail", message))
        elif re.search(r"all \d+ cases pass", text):
            out.append(Result(ex.number, "pass", text.strip()))
        else:
            out.append(Result(ex.number, "not run", text.strip()))
    return out


def with_book_checks(submitted, root: Path = ROOT, name: str = "notebook"):
    """A learner's notebook with every check cell reset to the book's, and the chapter it belongs to."""
    submitted = copy.deepcopy(submitted)
    mine = find_exercises(submitted, name, strict=False)
    if not mine:
        raise ValueError(f"{name}: no exercises found")
    number = int(mine[0].number.split(".")[0])
    chapter = next((ch for ch in chapters(root=root) if int(ch.number) == number), None)
    if chapter is None:
        raise ValueError(f"{name}: exercise {mine[0].number} belongs to no chapter of book.toml")
    original = nbformat.read(root / chapter.notebook, as_version=4)
    checks = {ex.number: original.cells[ex.check_cell].source for ex in find_exercises(original, chapter.notebook)}
    if [ex.number for ex in mine] != list(checks):
        raise ValueError(f"{name}: exercises {[ex.number for ex in mine]}, the book has {list(checks)}")
    for ex in mine:
        submitted.cells[ex.check_cell].source = checks[ex.number]
    return submitted, chapter


def grade(path: Path, root: Path = ROOT, student: str | None = None):
    """Grade a learner's notebook out of process, on held-out cases; return one verdict per exercise.

    Each exercise's solution cells (every code cell between its statement and its check) run after the book's
    own first code cell in a fresh interpreter (``tools/grading/runner.py``) where the references the exercises
    re-implement are traps; the learner's functions are called on cases drawn for ``student`` (default: the
    notebook's folder and file name) and their raw outputs come back as JSON and arrays. They are judged here,
    against the references, so nothing the learner's code patches can reach the verdict. The learner's code
    still runs with the grader's rights: grade untrusted notebooks in a sandbox.
    """
    from tools import grading
    from tools.grading.core import Verdict, judge, make_cases, run_learner

    path = Path(path)
    submitted, chapter = with_book_checks(nbformat.read(path, as_version=4), root, path.name)
    book = nbformat.read(root / chapter.notebook, as_version=4)
    setup = next(c.source for c in book.cells if c.cell_type == "code")
    specs = grading.specs(chapter.number)
    cells = {}
    for ex in find_exercises(submitted, path.name, strict=False):
        sources = [submitted.cells[i].source for i in range(ex.statement_cell + 1, ex.check_cell)
                   if submitted.cells[i].cell_type == "code"]
        cells[ex.number] = _without_magics("\n\n".join(sources))
    if sorted(cells) != sorted(spec.number for spec in specs):
        raise ValueError(f"{path.name}: exercises {sorted(cells)}, the grader has specs for "
                         f"{sorted(spec.number for spec in specs)}")
    # Students hand in notebooks of the same name, one folder each: the folder tells them apart.
    student = student or hashlib.sha256(f"{path.resolve().parent.name}/{path.name}".encode()).hexdigest()[:16]
    cases = {spec.number: make_cases(spec, student) for spec in specs}
    outputs, arrays, tail = run_learner(setup, cells, specs, cases, (root / chapter.notebook).parent, root)
    if not outputs:
        reason = (tail.strip().splitlines() or ["the exercises did not run"])[-1]
        return [Verdict(spec.number, "fail", f"the grader's run failed: {reason}") for spec in specs]
    return [judge(spec, cases[spec.number], outputs.get(spec.number), arrays) for spec in specs]


def _without_magics(source: str) -> str:
    """IPython magics and shell escapes (``%time``, ``!ls``) commented out: the grader runs plain Python."""
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


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


def _grade_id(ex: Exercise, role: str) -> str:
    return f"ex-{ex.number.replace('.', '-')}-{role}"


def _nbgrader_roles(nb, exercises: list[Exercise]) -> dict[int, dict]:
    """nbgrader's metadata for each cell of ``nb`` (schema 3), by cell index.

    An exercise's solution cells are autograded answers (``solution``, unlocked), its check cell an autograded test
    (``grade``, locked, worth :data:`POINTS` of its difficulty); every other cell, the statements included, is
    read-only (``locked``). The grade_ids are ``ex-N-M-statement``, ``ex-N-M-solution`` (``-solution-2``, ... for
    more solution cells), ``ex-N-M-check``, ``setup`` for the first code cell and ``cell-<cell id>`` for the rest.
    Raises ValueError for a solution cell outside an exercise, which nbgrader would refuse.
    """
    roles: dict[int, dict] = {}
    for ex in exercises:
        roles[ex.statement_cell] = {"grade_id": _grade_id(ex, "statement"), "locked": True}
        answers = [j for j in range(ex.statement_cell + 1, ex.check_cell) if is_solution_cell(nb.cells[j])]
        for k, j in enumerate(answers):
            roles[j] = {"grade_id": _grade_id(ex, "solution" + (f"-{k + 1}" if k else "")), "solution": True}
        roles[ex.check_cell] = {"grade_id": _grade_id(ex, "check"), "grade": True, "locked": True,
                                "points": POINTS[ex.difficulty]}
    setup = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)
    for i, cell in enumerate(nb.cells):
        if i in roles:
            continue
        if is_solution_cell(cell):
            raise ValueError(f"cell {i} holds {BEGIN} but belongs to no exercise")
        roles[i] = {"grade_id": "setup" if i == setup else f"cell-{cell.get('id', i)}", "locked": True}
    return {i: {"grade": False, "locked": False, "solution": False, "task": False, **role, "schema_version": 3}
            for i, role in roles.items()}


def _removed(cell):
    """The note that stands in a student notebook for a cell tagged ``remove-in-student``."""
    note = nbformat.v4.new_markdown_cell(REMOVED_NOTE, metadata=copy.deepcopy(cell.metadata))
    if "id" in cell:
        note.id = cell.id
    return note


def _with_nbgrader(nb, student: bool):
    """A copy of ``nb`` with nbgrader's metadata on every cell (see :func:`_nbgrader_roles`), the outputs of
    solution and check cells cleared and each cell tagged ``remove-in-student`` replaced by :data:`REMOVED_NOTE`;
    ``student=True`` also replaces each solution by a stub and makes the locked cells read-only in Jupyter."""
    nb = copy.deepcopy(nb)
    exercises = find_exercises(nb)
    roles = _nbgrader_roles(nb, exercises)
    graded = {i for i, role in roles.items() if role["solution"] or role["grade"]}
    for i, cell in enumerate(nb.cells):
        if REMOVE_TAG in cell.metadata.get("tags", []):
            if i in graded:
                raise ValueError(f"cell {i} is tagged {REMOVE_TAG} but belongs to an exercise")
            nb.cells[i] = cell = _removed(cell)
        if i in graded:
            _clear(cell)
        if student and roles[i]["solution"]:
            cell.source = strip_solution(cell.source)
        if student:
            cell.metadata.update(deletable=False, **({} if roles[i]["solution"] else {"editable": False}))
        cell.metadata["nbgrader"] = roles[i]
    return nb


def student_version(nb):
    """A copy of ``nb`` for students: solutions replaced by stubs, solution and check outputs cleared, cells tagged
    ``remove-in-student`` replaced by a note, and nbgrader's metadata on every cell (solutions unlocked, checks
    autograded tests, every other cell read-only)."""
    return _with_nbgrader(nb, student=True)


def instructor_version(nb):
    """The source notebook of nbgrader's ``generate_assignment``: ``nb`` with its solutions and their markers,
    nbgrader's metadata on every cell, the outputs of solution and check cells cleared and each cell tagged
    ``remove-in-student`` already replaced by a note (nbgrader would hand it out)."""
    nb = _with_nbgrader(nb, student=False)
    nb.metadata.pop("jupytext", None)  # in nbgrader's source folder, a jupytext pairing would write a twin
    return nb


def solutions_version(nb, title: str):
    """The exercises only: statement, solution and check of each, for instructors."""
    exercises = find_exercises(nb, title)
    cells = [nbformat.v4.new_markdown_cell(f"# Solutions: {title}")]
    for ex in exercises:
        for index in range(ex.statement_cell, ex.check_cell + 1):
            cells.append(copy.deepcopy(nb.cells[index]))
    out = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))
    out.metadata.pop("jupytext", None)
    return out


def exercise_table(root: Path = ROOT) -> str:
    """The instructor page's table: exercises per chapter by difficulty, then every exercise (markdown)."""
    page_dir = (root / INSTRUCTORS).parent
    summary = ["| chapter | exercises | easy | medium | hard |", "|---|---|---|---|---|"]
    rows = ["| exercise | chapter | topic | difficulty | check |", "|---|---|---|---|---|"]
    total: Counter = Counter()
    for ch in chapters(root=root):
        nb = nbformat.read(root / ch.notebook, as_version=4)
        found = find_exercises(nb, Path(ch.notebook).stem)
        counts = Counter(ex.difficulty for ex in found)
        total.update(counts)
        total["all"] += len(found)
        link = Path(ch.notebook).relative_to(page_dir.relative_to(root)).as_posix()
        summary.append(f"| {int(ch.number)}. [{ch.title}]({link}) | {len(found)} | "
                       + " | ".join(str(counts[d]) for d in DIFFICULTIES) + " |")
        rows += [f"| {ex.number} | {ch.title} | {ex.topic} | {ex.difficulty} | `arlib.checks.{ex.check}` |"
                 for ex in found]
    summary.append(f"| **all chapters** | **{total['all']}** | "
                   + " | ".join(f"**{total[d]}**" for d in DIFFICULTIES) + " |")
    return "\n".join(summary) + "\n\n" + "\n".join(rows)


def page_table(text: str) -> str:
    """The text between the table markers of the instructor page."""
    if text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1 or text.index(TABLE_START) > text.index(TABLE_END):
        raise ValueError(f"{INSTRUCTORS} must hold the markers {TABLE_START} and {TABLE_END} once each, in order")
    return text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip("\n")


def with_table(text: str, table: str) -> str:
    page_table(text)  # validates the markers
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    return f"{before}{TABLE_START}\n{table}\n{TABLE_END}{after}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["student", "instructor", "solutions", "table", "grade"])
    parser.add_argument("notebooks", nargs="*", type=Path, help="grade: the learners' notebooks")
    parser.add_argument("--chapter", help="two-digit chapter number, e.g. 01 (default: all)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--root", default=str(ROOT), help="the book's root (holds book.toml)")
    parser.add_argument("--student", help="grade: the student's id, which seeds the held-out cases "
                        "(default: a hash of the notebook's folder and file name)")
    parser.add_argument("--notebook", choices=["chapter", "exercises"],
                        help="student, instructor: the whole chapter, or its first code cell and its exercises "
                             "(default: chapter for student, exercises for instructor)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help=f"table: refresh the table in {INSTRUCTORS}")
    what.add_argument("--check", action="store_true", help=f"table: exit 1 if {INSTRUCTORS} is out of date")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        if args.command == "table":
            return _table(root, args.write, args.check)
        if args.command == "grade":
            return _grade(args.notebooks, root, args.student)
        out = Path(args.out) if args.out else root / "_build" / args.command
        out.mkdir(parents=True, exist_ok=True)
        for ch in chapters(args.chapter, root):
            path = root / ch.notebook
            nb = nbformat.read(path, as_version=4)
            count = len(find_exercises(nb, path.stem))
            part = args.notebook or ("exercises" if args.command == "instructor" else "chapter")
            if part == "exercises" and args.command in ("student", "instructor"):
                nb = exercises_only(nb)
            if args.command == "student":
                result, name = student_version(nb), path.name
            elif args.command == "instructor":  # nbgrader's source folder: one assignment per chapter
                result, name = instructor_version(nb), f"{path.stem}/{path.name}"
                (out / path.stem).mkdir(exist_ok=True)
            else:
                result, name = solutions_version(nb, ch.title), f"{path.stem}-solutions.ipynb"
            nbformat.validate(result)
            nbformat.write(result, out / name)
            print(f"{out / name}: {count} exercises")
    except (manifest.ManifestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _grade(paths: list[Path], root: Path, student: str | None = None) -> int:
    """Print each notebook's table of verdicts; 1 when any exercise does not pass."""
    if not paths:
        raise ValueError("grade: name the notebooks to grade")
    if student is not None and len(paths) > 1:
        raise ValueError("--student: give one notebook with it (each student has their own cases)")
    failed = False
    for path in paths:
        outcome = grade(path, root, student)
        passed = sum(v.status == "pass" for v in outcome)
        failed |= passed < len(outcome)
        print(f"{path}: {passed}/{len(outcome)} exercises pass")
        print("| exercise | result | reason |\n|---|---|---|")
        for v in outcome:
            reason = " ".join(v.reason.replace("|", "/").split())
            print(f"| {v.number} | {v.status} | {reason} |")
    return 1 if failed else 0


def _table(root: Path, write: bool, check: bool) -> int:
    table = exercise_table(root)
    if not (write or check):
        print(table)
        return 0
    page = root / INSTRUCTORS
    text = page.read_text(encoding="utf-8")
    if check:
        if page_table(text) != table:
            print(f"{INSTRUCTORS}: the exercise table is out of date; run python tools/classroom.py table --write",
                  file=sys.stderr)
            return 1
        print(f"{INSTRUCTORS}: the exercise table is up to date")
        return 0
    new = with_table(text, table)
    if new != text:
        page.write_text(new, encoding="utf-8")
    print(f"{INSTRUCTORS}: {'updated' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
