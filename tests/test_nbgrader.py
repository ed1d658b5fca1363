"""The student and instructor notebooks work with nbgrader (the book's page "For instructors").

Every chapter's student and instructor notebooks, whole or exercises only, carry nbgrader's cell metadata (schema 3)
that nbgrader's own validator accepts: each exercise's solution cells are unlocked autograded answers, its check an
autograded test worth the exercise's points, every other cell read-only, and every grade_id unique; nbgrader's
ClearSolutions accepts the instructor notebooks. Cells tagged ``remove-in-student`` are replaced by a note.

One test runs nbgrader itself on chapter 0's exercises (the fastest): ``nbgrader generate_assignment`` on the
instructor notebook written by ``tools/classroom.py instructor``, then ``nbgrader autograde`` on three submissions:
the reference solutions (full marks), the stubs (zero), and the student notebook of ``tools/classroom.py student
--notebook exercises`` with a first answer and every check edited to pass (nbgrader restores the checks, so only the
first exercise's points). The course, its sqlite gradebook and every folder nbgrader or Jupyter could write to (HOME,
the Jupyter and IPython folders) live in the test's temporary folder.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import book, classroom  # noqa: E402

pytest.importorskip("nbgrader", reason="nbgrader is in the test extra: pip install -r requirements.lock")
from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.nbgraderformat import MetadataValidator  # noqa: E402
from nbgrader.preprocessors import ClearSolutions  # noqa: E402

ROOT = Path(os.environ.get("BOOK_TEST_ROOT", REPO)).resolve()
CHAPTERS = [ch for ch in book.load_manifest(ROOT).chapters if (ROOT / ch.notebook).is_file()]
IDS = [Path(ch.notebook).stem for ch in CHAPTERS]
VERSIONS = {"student": classroom.student_version, "instructor": classroom.instructor_version}


def read(ch) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / ch.notebook, as_version=4)


def meta(cell) -> dict:
    return cell.metadata["nbgrader"]


def tagged(cell) -> bool:
    return classroom.REMOVE_TAG in cell.metadata.get("tags", [])


def check_metadata(nb, base, kind: str) -> None:
    """``nb``, the ``kind`` version of ``base``, carries consistent nbgrader metadata on every cell."""
    assert len(nb.cells) == len(base.cells)
    assert all("nbgrader" in c.metadata for c in nb.cells), "a cell has no nbgrader metadata"
    MetadataValidator().validate_nb(nb)  # nbgrader's own checks: schema 3, grade_ids present and unique, points
    ids = [meta(c)["grade_id"] for c in nb.cells]
    assert len(set(ids)) == len(ids), "duplicate grade_id"
    exercises = classroom.find_exercises(base)
    answers, checks = set(), set()
    for ex in exercises:
        key = "ex-" + ex.number.replace(".", "-")
        assert meta(nb.cells[ex.statement_cell]) == {"grade": False, "grade_id": f"{key}-statement", "locked": True,
                                                     "solution": False, "task": False, "schema_version": 3}
        assert meta(nb.cells[ex.solution_cell]) == {"grade": False, "grade_id": f"{key}-solution", "locked": False,
                                                    "solution": True, "task": False, "schema_version": 3}
        assert meta(nb.cells[ex.check_cell]) == {"grade": True, "grade_id": f"{key}-check", "locked": True,
                                                 "points": classroom.POINTS[ex.difficulty], "solution": False,
                                                 "task": False, "schema_version": 3}
        answers.update(j for j in range(ex.solution_cell, ex.check_cell) if classroom.is_solution_cell(base.cells[j]))
        checks.add(ex.check_cell)
    for i, (cell, was) in enumerate(zip(nb.cells, base.cells, strict=True)):
        m = meta(cell)
        assert m["solution"] == (i in answers) and m["grade"] == (i in checks), f"cell {i}: {m}"
        assert m["locked"] == (i not in answers), f"cell {i}: only solution cells may be unlocked"
        if i in answers:
            assert (classroom.BEGIN in cell.source) == (kind == "instructor"), f"cell {i}"
        if i in answers or i in checks:
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i}: outputs not cleared"
        if kind == "student":
            assert cell.metadata.get("deletable") is False
            assert cell.metadata.get("editable", True) is (i in answers), f"cell {i}: read-only or not"
        else:
            assert "editable" not in cell.metadata and "deletable" not in cell.metadata
        if tagged(was):
            assert cell.cell_type == "markdown" and cell.source == classroom.REMOVED_NOTE, f"cell {i} not removed"
            assert cell.get("id") == was.get("id")
        else:
            assert cell.cell_type == was.cell_type
    assert classroom.BEGIN not in "".join(c.source for c in nb.cells if kind == "student")


@pytest.mark.parametrize("ch", CHAPTERS, ids=IDS)
def test_every_cell_of_the_student_and_instructor_notebooks_has_consistent_nbgrader_metadata(ch):
    original = read(ch)
    graded = {}
    for part, base in (("chapter", original), ("exercises", classroom.exercises_only(original))):
        for kind, version in VERSIONS.items():
            nb = version(base)
            check_metadata(nb, base, kind)
            graded[part, kind] = [(meta(c)["grade_id"], meta(c).get("points")) for c in nb.cells
                                  if meta(c)["solution"] or meta(c)["grade"]]
        # nbgrader's ClearSolutions refuses a solution region outside a solution cell; here it stubs every answer
        stubbed, _ = ClearSolutions().preprocess(classroom.instructor_version(base), {})
        assert classroom.BEGIN not in "".join(c.source for c in stubbed.cells)
        assert all("raise NotImplementedError()" in c.source for c in stubbed.cells if meta(c)["solution"])
    assert len(set(map(tuple, graded.values()))) == 1, "grade_ids differ between the versions"
    assert sum(points or 0 for _, points in graded["chapter", "student"]) == sum(
        classroom.POINTS[ex.difficulty] for ex in classroom.find_exercises(original))


SETUP = "import arlib.checks"
SHOWN = "def f():\n    return 1  # the solution, shown in the chapter's text"
EXERCISE = ["md:## Exercises\n\n**Exercise 3.1** (a topic; easy). Write f.",
            "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", "arlib.checks.perplexity(f)"]


def _nb(*cells, tag: int | None = None):
    made = [nbformat.v4.new_markdown_cell(s[3:]) if s.startswith("md:") else nbformat.v4.new_code_cell(s)
            for s in cells]
    if tag is not None:
        made[tag].metadata["tags"] = [classroom.REMOVE_TAG]
        if made[tag].cell_type == "code":
            made[tag].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    return nbformat.v4.new_notebook(cells=made)


@pytest.mark.parametrize("kind", VERSIONS)
def test_a_cell_tagged_remove_in_student_is_replaced_by_a_note(kind):
    base = _nb(SETUP, "md:Some text.", SHOWN, *EXERCISE, tag=2)
    nb = VERSIONS[kind](base)
    check_metadata(nb, base, kind)
    assert nb.cells[2].source == classroom.REMOVED_NOTE and "outputs" not in nb.cells[2]
    assert nb.cells[2].metadata["tags"] == [classroom.REMOVE_TAG]
    assert "return 1" not in "".join(c.source for c in nb.cells if kind == "student")
    assert base.cells[2].source == SHOWN, "the original notebook was changed"
    nbformat.validate(nb)


@pytest.mark.parametrize("tag", [4, 5])
def test_an_exercise_cell_cannot_be_removed_from_the_student_version(tag):
    with pytest.raises(ValueError, match="belongs to an exercise"):
        classroom.student_version(_nb(SETUP, "md:Text.", SHOWN, *EXERCISE, tag=tag))


def test_a_solution_outside_an_exercise_is_refused():
    with pytest.raises(ValueError, match="belongs to no exercise"):
        classroom.instructor_version(_nb(SETUP, EXERCISE[1], *EXERCISE))


def test_a_second_solution_cell_of_an_exercise_is_an_answer_too():
    base = _nb(SETUP, *EXERCISE[:2], EXERCISE[1].replace("f", "g"), EXERCISE[2])
    nb = classroom.student_version(base)
    assert [meta(c)["grade_id"] for c in nb.cells] == ["setup", "ex-3-1-statement", "ex-3-1-solution",
                                                        "ex-3-1-solution-2", "ex-3-1-check"]
    assert meta(nb.cells[3])["solution"] and not meta(nb.cells[3])["locked"]


@pytest.mark.parametrize("command, part", [("student", "exercises"), ("instructor", "chapter")])
def test_the_commands_write_the_part_asked_for(command, part, tmp_path):
    ch = CHAPTERS[0]
    path = Path(ch.notebook)
    args = [command, "--chapter", ch.number, "--notebook", part, "--out", str(tmp_path), "--root", str(ROOT)]
    assert classroom.main(args) == 0
    written = tmp_path / (path.name if command == "student" else f"{path.stem}/{path.name}")
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == [written]
    nb, original = nbformat.read(written, as_version=4), read(ch)
    base = classroom.exercises_only(original) if part == "exercises" else original
    check_metadata(nb, base, command)
    assert ("jupytext" in nb.metadata) == (command == "student" and "jupytext" in original.metadata)


# ----------------------------------------------------------------------------------------- nbgrader itself


def _nbgrader(*args: str, course: Path, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _answer(source: str) -> str:
    """A solution cell as a student would hand it in: the solution without nbgrader's markers."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in (classroom.BEGIN, classroom.END))


@pytest.mark.slow  # about 20 s: nbgrader runs three submissions of chapter 0's exercises in fresh kernels
def test_nbgrader_generates_and_autogrades_chapter_0(tmp_path):
    ch = next(ch for ch in CHAPTERS if ch.number == "00")
    name = Path(ch.notebook).stem
    course, home = tmp_path / "course", tmp_path / "home"
    assert classroom.main(["instructor", "--chapter", "00", "--out", str(course / "source"), "--root", str(ROOT)]) == 0
    db = f"sqlite:///{tmp_path / 'gradebook.db'}"
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        f"c.CourseDirectory.db_url = {db!r}\n"
        "c.CourseDirectory.course_id = 'arbook'\n"
        f"c.Exchange.root = {str(tmp_path / 'exchange')!r}\n"
        "c.ExecutePreprocessor.timeout = 300\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               XDG_DATA_HOME=str(home / ".local/share"), JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
               JUPYTER_DATA_DIR=str(home / "jupyter-data"), JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
               IPYTHONDIR=str(home / "ipython"), ARLIB_THREADS="1", MPLBACKEND="Agg",
               PYDEVD_DISABLE_FILE_VALIDATION="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # nbgrader runs `alembic`

    _nbgrader("generate_assignment", name, "--create", course=course, env=env)
    source = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
    release = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
    assert [meta(c)["grade_id"] for c in release.cells] == [meta(c)["grade_id"] for c in source.cells]
    answers = {meta(c)["grade_id"]: _answer(c.source) for c in source.cells if meta(c)["solution"]}
    blocks = [b for c in source.cells for b in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", c.source, re.S)]
    given = "\n".join(re.sub(r"### BEGIN SOLUTION\n.*?### END SOLUTION", "", c.source, flags=re.S)
                      for c in source.cells)
    secret = {line.strip() for b in blocks for line in b.splitlines() if len(line.strip()) > 3}
    secret = {line for line in secret if line not in given}
    handed_out = "\n".join(c.source for c in release.cells)
    assert secret and classroom.BEGIN not in handed_out
    assert not [line for line in secret if line in handed_out], "nbgrader's student version holds solution lines"
    assert all("raise NotImplementedError()" in c.source for c in release.cells if meta(c)["solution"])

    checks = [meta(c)["grade_id"] for c in release.cells if meta(c)["grade"]]
    points = {meta(c)["grade_id"]: meta(c)["points"] for c in source.cells if meta(c)["grade"]}
    first = min(answers)
    # The third hands in tools/classroom.py's own student notebook (not nbgrader's release) with one answer and
    # every check edited to pass: nbgrader must accept its metadata and restore the checks.
    handout = classroom.student_version(classroom.exercises_only(read(ch)))
    submissions = {"reference": copy.deepcopy(release), "stubs": copy.deepcopy(release), "edited-checks": handout}
    for who, nb in submissions.items():
        for cell in nb.cells:
            grade_id = meta(cell)["grade_id"]
            if grade_id in answers and (who == "reference" or (who == "edited-checks" and grade_id == first)):
                cell.source = answers[grade_id]
            if who == "edited-checks" and grade_id in points:
                cell.source = 'print("all 5 cases pass")'
        folder = course / "submitted" / who / name
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{name}.ipynb")

    _nbgrader("autograde", name, "--create", course=course, env=env)
    first_check = first.replace("-solution", "-check")
    expected = {"reference": sum(points.values()), "stubs": 0, "edited-checks": points[first_check]}
    with Gradebook(db) as gradebook:
        scores = {who: gradebook.find_submission(name, who).score for who in submissions}
        assert {gradebook.find_submission(name, who).max_score for who in submissions} == {sum(points.values())}
    assert scores == expected, scores
    graded = nbformat.read(course / "autograded" / "reference" / name / f"{name}.ipynb", as_version=4)
    out = {meta(c)["grade_id"]: "".join(o.get("text", "") for o in c.outputs) for c in graded.cells
           if c.cell_type == "code"}
    assert all(re.search(r"all \d+ cases pass", out[check]) for check in checks), out
    assert set(checks) == set(points) and len(checks) == len(classroom.find_exercises(read(ch)))
