"""Classroom mode (the book's page "For instructors"): the exercises, their checks, the student notebooks,
the instructor page.

For every chapter of book.toml, the student notebook holds no solution text and runs: its first code cell and
its exercises section execute in a fresh kernel, and every check reports "not yet implemented"; the original
notebook's same cells pass every check. Each check is also shown to catch deliberately wrong answers. The
kernels run once per chapter and version (module-scoped fixtures), a few seconds each.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import arlib.checks  # noqa: E402
from arlib.checks import CheckFailed  # noqa: E402
from tools import book, classroom  # noqa: E402

ROOT = Path(os.environ.get("BOOK_TEST_ROOT", REPO)).resolve()
CHAPTERS = [ch for ch in book.load_manifest(ROOT).chapters if (ROOT / ch.notebook).is_file()]
IDS = [Path(ch.notebook).stem for ch in CHAPTERS]
MIN_EXERCISES = 4  # every chapter has at least four exercises
PASS_RE = re.compile(r"^Exercise (\d+\.\d+) \(.+\): all \d+ cases pass\.$", re.MULTILINE)


def read(ch) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / ch.notebook, as_version=4)


def solution_blocks(source: str) -> list[str]:
    return re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", source, flags=re.S)


# ----------------------------------------------------------------------------------------- strip_solution


def test_strip_solution_keeps_the_indentation_and_the_rest():
    source = "def f(x):\n    '''Doc.'''\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    assert classroom.strip_solution(source) == "def f(x):\n    '''Doc.'''\n    raise NotImplementedError()"


def test_strip_solution_replaces_every_block():
    source = (
        "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n\n\n"
        "def g():\n    if True:\n        ### BEGIN SOLUTION\n        return 2\n        ### END SOLUTION\n    return 0\n"
        "### BEGIN SOLUTION\nh = 3\n### END SOLUTION\n"
    )
    assert classroom.strip_solution(source) == (
        "def f():\n    raise NotImplementedError()\n\n\n"
        "def g():\n    if True:\n        raise NotImplementedError()\n    return 0\n"
        "raise NotImplementedError()"
    )
    compile(classroom.strip_solution(source), "<stub>", "exec")


def test_strip_solution_leaves_a_cell_without_markers_alone():
    assert classroom.strip_solution("x = 1\nprint(x)") == "x = 1\nprint(x)"


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1\n", "BEGIN SOLUTION without END"),
        ("x = 1\n### END SOLUTION\n", "END SOLUTION without BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested"),
        ("### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION\n", "END SOLUTION without BEGIN"),
    ],
)
def test_strip_solution_rejects_unbalanced_markers(source, message):
    with pytest.raises(ValueError, match=message):
        classroom.strip_solution(source)


# ----------------------------------------------------------------------------------------- find_exercises


def _nb(*cells):
    made = [nbformat.v4.new_markdown_cell(s[3:]) if s.startswith("md:") else nbformat.v4.new_code_cell(s)
            for s in cells]
    return nbformat.v4.new_notebook(cells=made)


SETUP = "import arlib.checks"
HEADING = "md:## Exercises\n\nIntro.\n\n**Exercise 3.1** (a topic; easy). Write f."
SOLUTION = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
CHECK = "arlib.checks.perplexity(f)"


def test_find_exercises_reads_the_header_and_the_cells():
    nb = _nb(SETUP, "md:text", HEADING, SOLUTION, CHECK, "md:**Exercise 3.2** (other; hard). Write g.",
             "md:A hint.", SOLUTION.replace("f", "g"), CHECK.replace("(f)", "(g)"), "md:## Summary")
    found = classroom.find_exercises(nb, "03-x")
    assert [(e.number, e.topic, e.difficulty, e.check) for e in found] == [
        ("3.1", "a topic", "easy", "perplexity"), ("3.2", "other", "hard", "perplexity")]
    assert [(e.statement_cell, e.solution_cell, e.check_cell) for e in found] == [(2, 3, 4), (5, 7, 8)]
    only = classroom.exercises_only(nb)
    assert [c.source for c in only.cells] == [SETUP] + [c.source for c in nb.cells[2:]]


@pytest.mark.parametrize(
    "cells, message",
    [
        ([SETUP, HEADING.replace("easy", "trivial"), SOLUTION, CHECK], "malformed exercise header"),
        ([SETUP, HEADING.replace("**Exercise 3.1**", "**Exercise 3**"), SOLUTION, CHECK], "malformed"),
        ([SETUP, "md:**Exercise 3.1** (a; easy).", SOLUTION, CHECK, HEADING.replace("3.1", "3.2"), SOLUTION, CHECK],
         "comes before the '## Exercises' heading"),
        ([SETUP, HEADING + "\n\n**Exercise 3.2** (b; easy).", SOLUTION, CHECK], "holds 2 exercise headers"),
        ([SETUP, HEADING, SOLUTION], "needs a solution cell then a check cell"),
        ([SETUP, HEADING, CHECK, SOLUTION], "needs a solution cell then a check cell"),
        ([SETUP, HEADING, "md:**Exercise 3.2** (b; easy).", SOLUTION, CHECK], "exercise 3.1 needs a solution"),
    ],
)
def test_find_exercises_rejects_a_malformed_exercise(cells, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        classroom.find_exercises(_nb(*cells), "03-x")


def test_a_learners_notebook_is_graded_with_the_books_checks():
    """In a learner's notebook the markers are gone and a check may be edited; grading restores the check."""
    ch = CHAPTERS[0]
    submitted = classroom.student_version(read(ch))
    found = classroom.find_exercises(submitted, strict=False)
    submitted.cells[found[0].solution_cell].source = "def whatever():\n    return 0"
    submitted.cells[found[0].check_cell].source = 'print("all 3 cases pass")'
    graded, chapter = classroom.with_book_checks(submitted, ROOT)
    assert chapter == ch
    original = classroom.find_exercises(read(ch))
    assert graded.cells[found[0].check_cell].source == read(ch).cells[original[0].check_cell].source
    assert graded.cells[found[0].solution_cell].source == "def whatever():\n    return 0"


# ----------------------------------------------------------------------------------------- every chapter


@pytest.mark.parametrize("ch", CHAPTERS, ids=IDS)
def test_every_exercise_has_a_statement_a_solution_and_a_check(ch):
    nb = read(ch)
    found = classroom.find_exercises(nb, ch.notebook)
    assert len(found) >= MIN_EXERCISES, f"{ch.notebook}: {len(found)} exercises, at least {MIN_EXERCISES} needed"
    assert [e.number for e in found] == [f"{int(ch.number)}.{k}" for k in range(1, len(found) + 1)], (
        f"{ch.notebook}: exercises must be numbered {int(ch.number)}.1, {int(ch.number)}.2, ... in order")
    checks = [e.check for e in found]
    assert len(set(checks)) == len(checks), f"{ch.notebook}: a check is used by two exercises: {checks}"
    for e in found:
        assert e.statement_cell < e.solution_cell < e.check_cell
        statement = nb.cells[e.statement_cell].source
        assert len(statement.split(f"**Exercise {e.number}**", 1)[1].split()) >= 12, (
            f"{ch.notebook}: exercise {e.number} has no real statement")
        assert solution_blocks(nb.cells[e.solution_cell].source), f"exercise {e.number}: empty solution cell"
        assert e.check in arlib.checks.__all__ and callable(getattr(arlib.checks, e.check)), (
            f"{ch.notebook}: exercise {e.number} calls arlib.checks.{e.check}, which does not exist")


@pytest.mark.parametrize("ch", CHAPTERS, ids=IDS)
def test_every_solution_belongs_to_an_exercise(ch):
    nb = read(ch)
    found = classroom.find_exercises(nb, ch.notebook)
    heading = classroom.exercises_heading(nb)
    solution_cells = [i for i, c in enumerate(nb.cells) if classroom.is_solution_cell(c)]
    assert solution_cells, f"{ch.notebook} has no solution cell"
    assert min(solution_cells) > heading, f"{ch.notebook}: a solution cell comes before '## Exercises'"
    owned = set()
    for e in found:
        owned.update(range(e.solution_cell, e.check_cell))
    stray = [i for i in solution_cells if i not in owned]
    assert not stray, f"{ch.notebook}: solution cells {stray} sit between an exercise's check and the next statement"


@pytest.mark.parametrize("ch", CHAPTERS, ids=IDS)
def test_the_student_notebook_holds_no_solution(ch):
    original = read(ch)
    student = classroom.student_version(original)
    assert len(student.cells) == len(original.cells)
    blocks = [b for c in original.cells if c.cell_type == "code" for b in solution_blocks(c.source)]
    assert blocks
    # Text outside the solution blocks is given to the student anyway; every other line of a solution is secret.
    given = "\n".join(re.sub(r"### BEGIN SOLUTION\n.*?### END SOLUTION", "", c.source, flags=re.S)
                      for c in original.cells)
    secret = {line.strip() for b in blocks for line in b.splitlines()}
    secret = {line for line in secret if len(line) > 3 and line not in given}
    assert secret
    for i, cell in enumerate(student.cells):
        text = cell.source
        assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text, f"student cell {i} has markers"
        leaked = sorted(line for line in secret if line in text)
        assert not leaked, f"student cell {i} holds solution lines: {leaked}"


def _without_nbgrader(cell):
    """A student notebook's cell less nbgrader's metadata and Jupyter's read-only flags (tests/test_nbgrader.py)."""
    cell = copy.deepcopy(cell)
    for key in ("nbgrader", "editable", "deletable"):
        cell.metadata.pop(key, None)
    return cell


@pytest.mark.parametrize("ch", CHAPTERS, ids=IDS)
def test_the_student_notebook_changes_only_solutions_and_check_outputs(ch):
    original = read(ch)
    student = classroom.student_version(original)
    for i, (a, c) in enumerate(zip(original.cells, student.cells, strict=True)):
        b = _without_nbgrader(c)
        if classroom.is_solution_cell(a):
            assert b.source == classroom.strip_solution(a.source)
            assert "raise NotImplementedError()" in b.source
            assert b.outputs == [] and b.execution_count is None
            assert b.metadata == a.metadata and b.get("id") == a.get("id")
        elif classroom.is_check_cell(a):
            assert b.source == a.source
            assert b.outputs == [] and b.execution_count is None, f"cell {i}: check outputs must be cleared"
        elif classroom.REMOVE_TAG in a.metadata.get("tags", []):
            assert b.cell_type == "markdown" and b.source == classroom.REMOVED_NOTE, f"cell {i} was not removed"
        else:
            assert b == a, f"cell {i} ({a.cell_type}) differs in the student notebook"
    assert student.metadata == original.metadata


# ----------------------------------------------------------------------------------------- running the exercises


def _run(nb, ch):
    env = {**os.environ, "ARLIB_THREADS": "1", "MPLBACKEND": "Agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    return classroom.run_exercises(nb, (ROOT / ch.notebook).parent, timeout=600, env=env)


@pytest.fixture(scope="module", params=CHAPTERS, ids=IDS)
def ran(request):
    """One chapter's first code cell and exercises, executed once as the student notebook and once as the book's."""
    ch = request.param
    original = read(ch)
    return SimpleNamespace(
        chapter=ch,
        exercises=classroom.find_exercises(classroom.exercises_only(original), ch.notebook),
        student=_run(classroom.student_version(original), ch),
        original=_run(original, ch),
    )


def _errors(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.output_type == "error"]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


@pytest.mark.slow
def test_every_check_reports_a_stub_as_not_yet_implemented(ran):
    checks = {e.check_cell: e.number for e in ran.exercises}
    for i, cell in enumerate(ran.student.cells):
        if cell.cell_type != "code":
            continue
        errors = _errors(cell)
        if i not in checks:
            assert not errors, f"student notebook, cell {i} failed: {errors[0].ename}: {errors[0].evalue}"
            continue
        assert len(errors) == 1, f"exercise {checks[i]}: the check did not fail on the stub"
        err = errors[0]
        assert err.ename == "CheckFailed", f"exercise {checks[i]}: the check crashed: {err.ename}: {err.evalue}"
        assert "not yet implemented" in err.evalue, f"exercise {checks[i]}: {err.evalue}"
        assert f"Exercise {checks[i]} " in err.evalue
    assert [r.status for r in classroom.results(ran.student)] == ["not yet implemented"] * len(ran.exercises)


@pytest.mark.slow
def test_every_check_passes_on_the_solution(ran):
    for i, cell in enumerate(ran.original.cells):
        for err in _errors(cell):
            pytest.fail(f"{ran.chapter.notebook}, cell {i}: {err.ename}: {err.evalue}")
    for e in ran.exercises:
        out = _stdout(ran.original.cells[e.check_cell])
        assert PASS_RE.findall(out) == [e.number], f"exercise {e.number}: its check printed {out!r}"
    assert [r.status for r in classroom.results(ran.original)] == ["pass"] * len(ran.exercises)


# ----------------------------------------------------------------------------------------- the instructor page


def test_the_instructor_page_table_matches_the_notebooks():
    page = (ROOT / classroom.INSTRUCTORS).read_text(encoding="utf-8")
    assert classroom.page_table(page) == classroom.exercise_table(ROOT), (
        f"{classroom.INSTRUCTORS} is out of date: python tools/classroom.py table --write")


def test_the_instructor_page_lists_every_chapter_and_exercise():
    table = classroom.exercise_table(ROOT)
    manifest = book.load_manifest(ROOT)
    assert classroom.INSTRUCTORS in manifest.pages, "book.toml does not list the instructor page"
    for ch in manifest.chapters:
        assert f"[{ch.title}](" in table, f"the table misses chapter {ch.title!r}"
        for e in classroom.find_exercises(read(ch), ch.notebook):
            assert f"| {e.number} | {ch.title} | {e.topic} | {e.difficulty} | `arlib.checks.{e.check}` |" in table


def test_the_table_command_writes_and_checks_the_page(tmp_path):
    page = tmp_path / "instructors.md"
    page.write_text(f"# I\n\nbefore\n\n{classroom.TABLE_START}\nold\n{classroom.TABLE_END}\n\nafter\n")
    table = classroom.exercise_table(ROOT)
    new = classroom.with_table(page.read_text(), table)
    assert new == f"# I\n\nbefore\n\n{classroom.TABLE_START}\n{table}\n{classroom.TABLE_END}\n\nafter\n"
    assert classroom.with_table(new, table) == new
    with pytest.raises(ValueError, match="markers"):
        classroom.page_table("# no markers")
    proc = subprocess.run([sys.executable, str(REPO / "tools/classroom.py"), "table", "--check", "--root", str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------------------- the exports


@pytest.mark.parametrize("command", ["student", "solutions"])
def test_the_exports_write_one_valid_notebook_per_chapter(command, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/classroom.py"), command, "--out", str(tmp_path), "--root", str(ROOT)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    written = sorted(tmp_path.glob("*.ipynb"))
    assert len(written) == len(CHAPTERS), [p.name for p in written]
    for ch in CHAPTERS:
        stem = Path(ch.notebook).stem
        path = tmp_path / (f"{stem}.ipynb" if command == "student" else f"{stem}-solutions.ipynb")
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        text = path.read_text(encoding="utf-8")
        exercises = classroom.find_exercises(read(ch))
        if command == "student":
            assert "### BEGIN SOLUTION" not in text
            assert sum("raise NotImplementedError()" in c.source for c in nb.cells) >= len(exercises)
        else:
            assert [e.number for e in classroom.find_exercises(nb)] == [e.number for e in exercises]


def test_one_chapter_only(tmp_path):
    ch = CHAPTERS[0]
    assert classroom.main(["student", "--chapter", ch.number, "--out", str(tmp_path), "--root", str(ROOT)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [Path(ch.notebook).name]
    with pytest.raises(SystemExit, match="no chapter '99'"):
        classroom.main(["student", "--chapter", "99", "--out", str(tmp_path), "--root", str(ROOT)])


# ----------------------------------------------------------------------------------------- each check, directly

def _stub(*args):
    raise NotImplementedError()


def _entropy_nats(text):
    counts = {c: text.count(c) for c in set(text)}
    return -sum(n / len(text) * math.log(n / len(text)) for n in counts.values())


def _class_means_ignoring_labels(images, labels, num_classes):
    return images.float().mean(0).expand(num_classes, *images.shape[1:]).clone()


def _class_means_off_by_one(images, labels, num_classes):
    return torch.stack([images[labels == (k + 1) % num_classes].float().mean(0) for k in range(num_classes)])


def _to_mel(f):
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _top_p_excluding_the_crossing_token(logits, p):
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    drop_sorted = probs.cumsum(dim=-1) > p  # drops the token that makes the mass reach p
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))


def _attention_unscaled(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    return torch.softmax(q @ k_all.transpose(-2, -1), dim=-1) @ v_all, k_all, v_all


def _attention_prepending(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_new, k_cache], dim=2), torch.cat([v_new, v_cache], dim=2)
    return F.scaled_dot_product_attention(q, k_all, v_all), k_all, v_all


def _continuation(model, prompt_ids, continuation_ids, reduce="sum", normalize=True):
    ids = torch.cat([prompt_ids, continuation_ids])[None]
    with torch.no_grad():
        logits = model(ids[:, :-1])
    scores = (torch.log_softmax(logits, dim=-1) if normalize else logits)[0]
    picked = scores[-len(continuation_ids):].gather(-1, continuation_ids[:, None])
    return getattr(picked, reduce)().item()


def _kl_unmasked(p, q):
    return (p * (p / q).log()).sum().item()


def _kn_bigram(counts, D, lower=None, unseen=None):
    counts = counts.double()
    V = counts.shape[0]
    preceders = (counts > 0).sum(0).double()
    T = (preceders > 0).sum()
    p_uni = (torch.clamp(preceders - D, min=0) + D * T / V) / preceders.sum() if lower is None else lower(counts)
    c_h, T_h = counts.sum(1, keepdim=True), (counts > 0).sum(1, keepdim=True)
    p = (torch.clamp(counts - D, min=0) + D * T_h * p_uni) / c_h.clamp_min(1)
    fallback = p_uni.expand_as(p) if unseen is None else torch.full_like(p, 1 / V)
    return torch.where(c_h > 0, p, fallback)


def _kn_with_raw_unigram(counts, D):  # occurrence counts, not continuation counts, for the lower order
    return _kn_bigram(counts, D, lower=lambda c: c.sum(0) / c.sum())


def _kn_uniform_for_unseen(counts, D):
    return _kn_bigram(counts, D, unseen=True)


def _tokens_closed_form(alpha, gamma):  # (1 - alpha^(gamma+1)) / (1 - alpha), no case for alpha = 1: nan there
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(1 - alpha ** (gamma + 1)) / np.float64(1 - alpha))


def _residual(p, q, reverse=False, normalize=True, fallback=True, absolute=False):
    d = (q - p) if reverse else (p - q)
    r = d.abs() if absolute else d.clamp_min(0)
    if not normalize:
        return r
    if fallback and r.sum() <= 0:
        return p
    return r / r.sum()


def _best_gamma(alpha, c, max_gamma=32, first=1, stop=1, bonus=1, index=False):
    gammas = np.arange(first, max_gamma + stop)
    improvement = (1 - alpha ** (gammas + bonus)) / ((1 - alpha) * (gammas * c + 1))
    best = int(np.argmax(improvement))
    return best if index else int(gammas[best])


def _lookup(tokens, n, gamma, oldest=False, periodic=True, self_match=False):
    L = len(tokens)
    starts = range(L - n + (1 if self_match else 0))
    for i in (starts if oldest else reversed(starts)):
        if tokens[i:i + n] == tokens[L - n:]:
            if not periodic or self_match:
                return tokens[i + n:i + n + gamma]
            d = L - n - i
            return [tokens[L - d + j % d] for j in range(gamma)]
    return []


def _accepted(p_x, q_x, u, rule=lambda p, q, u: u * q < p, prefix=True):
    accepted = rule(p_x, q_x, u).long()
    return int((accepted.cumprod(dim=0) if prefix else accepted).sum())


def _coupling(p, q, divide=True, guard=True):
    both = torch.minimum(p, q)
    tv = 1 - both.sum()
    if guard and tv <= 0:
        return torch.diag(both)
    return torch.diag(both) + torch.outer(q - both, p - both) / (tv if divide else 1)


def _rho(p, q, k, wrong_end=False):
    def valid(rho):
        beta = torch.minimum(q, p / rho).sum().item()
        return 1 - (1 - beta) ** k <= rho * beta + 1e-12

    if valid(1.0):
        return 1.0
    lo, hi = 1.0, float(k)
    for _ in range(60):
        mid = (lo + hi) / 2
        if valid(mid) != wrong_end:
            hi = mid
        else:
            lo = mid
    return hi


def _kseq_res(p, q, k, rho, by_beta=True, normalize=True):
    a = torch.minimum(q, p / rho)
    beta = a.sum()
    if beta >= 1 - 1e-12:
        return p
    passed = sum((1 - beta) ** i for i in range(k)) if by_beta else 1 - (1 - beta) ** k
    r = p - a * passed
    return r / (1 - beta) ** k if normalize else r


def _rrs(p, q, k, renormalize=True, guard=True):
    reject = 1.0
    for _ in range(k):
        reject *= 1 - torch.minimum(p, q).sum().item()
        r = (p - q).clamp_min(0)
        p = r / r.sum() if renormalize and (r.sum() > 0 or not guard) else (p if renormalize else r)
    return 1 - reject


def _st_quantize(z, codebook, pick="near", through="straight"):
    distance = (z.detach()[:, None] - codebook[None]).pow(2).sum(-1)
    idx = {"near": distance.argmin(1), "far": distance.argmax(1), "dot": (z.detach() @ codebook.T).argmax(1)}[pick]
    e = codebook[idx]
    z_q = {"straight": z + (e - z).detach(), "none": e, "backwards": e + (z - e).detach(), "undetached": z + (e - z)}
    return z_q[through], idx


def _ms_quantize(f, codebook, scales, down="area", up="bicubic", subtract=True, accumulate=True):
    B, D, H, _ = f.shape
    residual, f_hat, maps = f, torch.zeros_like(f), []
    for s in scales:
        r = residual if s == H else F.interpolate(residual, size=(s, s), mode=down)
        idx = torch.cdist(r.permute(0, 2, 3, 1).reshape(-1, D), codebook).argmin(1).view(B, s, s)
        codes = codebook[idx].permute(0, 3, 1, 2)
        back = codes if s == H else F.interpolate(codes, size=(H, H), mode=up)
        f_hat = f_hat + back if accumulate else back
        residual = residual - back if subtract else residual
        maps.append(idx)
    return maps, f_hat


def _verify(p, q, drafts, u, accept=lambda u, p, q: u * q < p, residual=lambda p, q: (p - q).clamp_min(0), stop=True):
    decided = []
    for i, x in enumerate(drafts.tolist()):
        if accept(u[i, 0], p[i, x], q[i, x]):
            decided.append(x)
            continue
        r = residual(p[i], q[i])
        cdf = torch.cumsum(r if r.sum() > 0 else p[i], 0)
        decided.append(min(int((cdf <= u[i, 1] * cdf[-1]).sum()), len(r) - 1))
        if stop:
            break
    return decided


def _proximity(p, x, neighbors, delta, own=False, strict=False, each=False, keep_x=True):
    row = neighbors[x]
    mass = p[row] if own else torch.where(row == x, torch.zeros_like(p[row]), p[row])
    if each:
        chosen = row[mass <= delta]
    else:
        spent = torch.cumsum(mass, 0)
        chosen = row[: int(((spent < delta) if strict else (spent <= delta)).sum())]
    return chosen if keep_x else chosen[chosen != x]


def _tokens_plan(steps, n, schedule, **mistake):
    from arlib.checks.ch04 import _plan  # the check's own plan, with its mistake switches

    return _plan(schedule, steps, n, **mistake)


def _mel_filters(n_mels, n_fft, sr, hz=False, points=2, area=False, clamp=True):
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sr / n_fft
    if hz:
        edges = torch.linspace(0, sr / 2, n_mels + points, dtype=torch.float64)
    else:
        edges = _to_hz(torch.linspace(0, float(_to_mel(torch.tensor(sr / 2))), n_mels + points).double())
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = torch.minimum((freqs - lower) / (center - lower), (upper - freqs) / (upper - center))
    tri = tri.clamp_min(0) if clamp else tri
    return tri * 2 / (upper - lower) if area else tri


def _ctc_log_prob(log_probs, target, blank=0, skip_equal=False, end="both", linear=False, viterbi=False):
    ext = torch.full((2 * len(target) + 1,), blank, dtype=torch.long)
    ext[1::2] = torch.tensor(target, dtype=torch.long)
    S = len(ext)
    skip = torch.zeros(S, dtype=torch.bool)
    skip[2:] = (ext[2:] != blank) & ((ext[2:] != ext[:-2]) | skip_equal)
    y = log_probs[:, ext].exp() if linear else log_probs[:, ext]  # (T, S)
    zero = 0.0 if linear else -math.inf
    a = torch.full((S,), zero, dtype=torch.float64)
    a[:2] = y[0, :2]
    for t in range(1, len(y)):
        padded = torch.cat([torch.full((2,), zero, dtype=torch.float64), a])
        step, jump = padded[1:S + 1], torch.where(skip, padded[:S], zero)
        terms = torch.stack([a, step, jump])
        if linear:
            a = terms.sum(0) * y[t]
        else:
            a = (terms.max(0).values if viterbi else torch.logsumexp(terms, 0)) + y[t]
    last = a[-2:] if end == "both" and S > 1 else a[-1:]
    if linear:
        return float(last.sum().log())
    return float(last.max() if viterbi else torch.logsumexp(last, 0))


def _collapse_wrong(labels, blank=0, how="drop first"):
    if how == "drop first":
        kept = [x for x in labels if x != blank]
        return [x for i, x in enumerate(kept) if i == 0 or x != kept[i - 1]]
    if how == "keep blanks":
        return [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]
    return [x for x in dict.fromkeys(labels) if x != blank]  # every duplicate removed, like a set


def _integrate_fire(hidden, alpha, threshold=1.0, whole=False, drop=False, strict=False, fire_last=False):
    weight, embedding, fired = 0.0, torch.zeros_like(hidden[0]), []
    for t in range(len(alpha)):
        a = float(alpha[t])
        if (weight + a > threshold) if strict else (weight + a >= threshold):
            part = a if whole else threshold - weight
            fired.append(embedding + part * hidden[t])
            weight = 0.0 if drop else a - (threshold - weight)
            embedding = torch.zeros_like(embedding) if whole else weight * hidden[t]
        else:
            weight, embedding = weight + a, embedding + a * hidden[t]
    if fire_last and weight > 0:
        fired.append(embedding)
    return torch.stack(fired) if fired else hidden.new_zeros(0, hidden.shape[1])


def _sae_topk(pre, k, by="value", relu=True, dim=-1, shift=0):
    key = pre.abs() if by == "magnitude" else (-pre if by == "smallest" else pre)
    idx = key.topk(k + shift, dim=dim).indices
    kept = pre.gather(dim, idx)
    return torch.zeros_like(pre).scatter(dim, idx, torch.relu(kept) if relu else kept)


def _sae_mmcs(t, u, normalize=True, transpose=False, absolute=False):
    if normalize:
        t, u = F.normalize(t, dim=1), F.normalize(u, dim=1)
    cos = t @ u.T
    cos = cos.abs() if absolute else cos
    return float((cos.max(0).values if transpose else cos.max(1).values).mean())


def _sae_bias(pre, bias, targets, groups, gm, gp, eps, **change):
    from arlib.checks.ch06 import _update_variant

    return _update_variant(pre, bias, targets, groups, gm, gp, eps, **change).to(bias.dtype)


def _sae_latent(f, mask, score="f1"):
    fires, mask = f > 0, mask.bool()
    tp = (fires & mask[:, None]).sum(0).double()
    scores = {"f1": 2 * tp / (fires.sum(0) + mask.sum()), "recall": tp / mask.sum(),
              "precision": tp / fires.sum(0).clamp_min(1), "mean": f[mask].double().mean(0),
              "jaccard_bug": tp}[score]
    return int(scores.argmax())


# check -> (what the wrong answer gets wrong, the arguments of the check); every check of arlib.checks is here.

def _sink_mask(T, n_sink, window, causal=True):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    keep = (j < n_sink) | ((i - j < window) & (i - j > -window))
    return keep & (j <= i) if causal else keep


def _quant_columns(k, bits, rounding=torch.round, levels=None):
    levels = 2 ** bits - 1 if levels is None else levels
    lo, hi = k.amin(0, keepdim=True), k.amax(0, keepdim=True)
    s = (hi - lo) / levels
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return rounding((k - lo) / safe).clamp(0, 2 ** bits - 1) * s + lo


def _quant_rows(k, bits):
    return _quant_columns(k.T, bits).T


def _quant_symmetric(k, bits):
    s = k.abs().amax(0, keepdim=True) / (2 ** (bits - 1) - 0.5)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(k / safe) * s


def _svd_rank(x, r, largest=True):
    U, S, Vh = torch.linalg.svd(x, full_matrices=False)
    keep = slice(0, max(r, 0)) if largest else slice(len(S) - r, len(S))
    return (U[:, keep] * S[keep]) @ Vh[keep]

def _two_draft_prefixes(p, q, descending=False, square_p=False):
    """Exercise 3.5's minimum over sorted prefixes, with two typical mistakes."""
    ratio = torch.where(q > 0, p / q.clamp_min(1e-300), torch.inf)
    order = ratio.argsort(descending=descending)
    p_prefix, q_prefix = p[order].cumsum(0), q[order].cumsum(0).clamp(max=1.0)
    values = (p_prefix ** 2 if square_p else p_prefix) + 1 - q_prefix ** 2
    return float(torch.cat([values.new_ones(1), values]).min())


WRONG = {
    "unigram_entropy": [("zeros", (lambda text: 0.0,)), ("nats instead of bits", (_entropy_nats,))],
    "class_means": [("ignores the labels", (_class_means_ignoring_labels,)),
                    ("class off by one", (_class_means_off_by_one,)),
                    ("integer division", (lambda im, lab, k: torch.stack(
                        [im[lab == c].sum(0) // (lab == c).sum() for c in range(k)]),))],
    "frame_signal": [("one frame short", (lambda w, n, h: w.unfold(0, n, h)[:-1],)),
                     ("zeros", (lambda w, n, h: torch.zeros(1 + (len(w) - n) // h, n),)),
                     ("hop off by one", (lambda w, n, h: w.unfold(0, n, h + 1),))],
    "mel_scale": [("natural log", (lambda f: 2595.0 * torch.log(1.0 + f / 700.0), _to_hz)),
                  ("inverse not exact", (_to_mel, lambda m: 700.0 * (10.0 ** (m / 2595.0))))],
    "perplexity": [("mean NLL without exp", (lambda lp: float(-lp.mean()),)),
                   ("clamps an impossible token", (lambda lp: math.exp(float(-lp.clamp(min=-30).mean())),)),
                   ("exp of the sum", (lambda lp: math.exp(float(-lp.sum())),))],
    "top_p_filter": [("keeps everything", (lambda logits, p: logits.clone(),)),
                     ("drops the token that reaches p", (_top_p_excluding_the_crossing_token,))],
    "cached_attention": [("no 1/sqrt(D) scaling", (_attention_unscaled,)),
                         ("new key prepended", (_attention_prepending,))],
    "continuation_log_prob": [("mean instead of sum", (lambda m, p, c: _continuation(m, p, c, reduce="mean"),)),
                              ("raw logits", (lambda m, p, c: _continuation(m, p, c, normalize=False),)),
                              ("zeros", (lambda m, p, c: 0.0,))],
    "kl_divergence": [("zeros", (lambda p, q: 0.0,)), ("reversed KL(q||p)", (lambda p, q: _kl_unmasked(q, p),)),
                      ("0 log 0 left as nan", (_kl_unmasked,))],
    "kneser_ney_bigram": [("add-one instead", (lambda c, D: (c + 1) / (c + 1).sum(1, keepdim=True),)),
                          ("raw counts as lower order", (_kn_with_raw_unigram,)),
                          ("unseen contexts left uniform", (_kn_uniform_for_unseen,))],
    "expected_tokens_sum": [("no bonus token", (lambda a, g: float(sum(a**k for k in range(1, g + 1))),)),
                            ("one term short", (lambda a, g: float(sum(a**k for k in range(g))),)),
                            ("closed form, nan at alpha = 1", (_tokens_closed_form,))],
    "residual_distribution": [("not renormalized", (lambda p, q: _residual(p, q, normalize=False),)),
                              ("max(0, q - p)", (lambda p, q: _residual(p, q, reverse=True),)),
                              ("|p - q|", (lambda p, q: _residual(p, q, absolute=True),)),
                              ("nan when p == q", (lambda p, q: _residual(p, q, fallback=False),))],
    "optimal_gamma_search": [("argmax index", (lambda a, c, max_gamma=32: _best_gamma(a, c, max_gamma, index=True),)),
                             ("max_gamma left out", (lambda a, c, max_gamma=32: _best_gamma(a, c, max_gamma, stop=0),)),
                             ("no bonus token", (lambda a, c, max_gamma=32: _best_gamma(a, c, max_gamma, bonus=0),)),
                             ("ignores the cost", (lambda a, c, max_gamma=32: max_gamma,))],
    "prompt_lookup": [("the oldest match", (lambda t, n, g: _lookup(t, n, g, oldest=True),)),
                      ("no copy past the end", (lambda t, n, g: _lookup(t, n, g, periodic=False),)),
                      ("the suffix matches itself", (lambda t, n, g: _lookup(t, n, g, self_match=True),))],
    "accept_prefix": [("counts every acceptance", (lambda p, q, u: _accepted(p, q, u, prefix=False),)),
                      ("min(1, q/p)", (lambda p, q, u: _accepted(p, q, u, rule=lambda p, q, u: u * p < q),)),
                      ("u <= p/q", (lambda p, q, u: _accepted(p, q, u, rule=lambda p, q, u: u * q <= p),))],
    "maximal_coupling": [("independent coupling", (lambda p, q: torch.outer(q, p),)),
                         ("rows and columns swapped", (lambda p, q: _coupling(p, q).T,)),
                         ("diagonal only", (lambda p, q: torch.diag(torch.minimum(p, q)),)),
                         ("leftovers not divided by TV", (lambda p, q: _coupling(p, q, divide=False),)),
                         ("nan when p == q", (lambda p, q: _coupling(p, q, guard=False),))],
    "kseq_rho_search": [("always k", (lambda p, q, k: float(k),)), ("always 1", (lambda p, q, k: 1.0,)),
                        ("bisection moves the wrong end", (lambda p, q, k: _rho(p, q, k, wrong_end=True),))],
    "kseq_residual_law": [("chapter 2's residual", (lambda p, q, k, rho: _residual(p, q),)),
                          ("no division by beta", (lambda p, q, k, rho: _kseq_res(p, q, k, rho, by_beta=False),)),
                          ("not normalized", (lambda p, q, k, rho: _kseq_res(p, q, k, rho, normalize=False),))],
    "rrs_acceptance_exact": [("the same beta for every try",
                              (lambda p, q, k: 1 - (1 - torch.minimum(p, q).sum().item()) ** k,)),
                             ("not renormalized", (lambda p, q, k: _rrs(p, q, k, renormalize=False),)),
                             ("nan when p == q", (lambda p, q, k: _rrs(p, q, k, guard=False),))],
    "two_draft_optimum": [("one draft's 1 - TV", (lambda p, q: torch.minimum(p, q).sum().item(),)),
                          ("the per-token bound", (lambda p, q: torch.minimum(p, 1 - (1 - q) ** 2).sum().item(),)),
                          ("prefixes in decreasing p/q",
                           (lambda p, q: _two_draft_prefixes(p.double(), q.double(), descending=True),)),
                          ("the square on p(S) too",
                           (lambda p, q: _two_draft_prefixes(p.double(), q.double(), square_p=True),))],
    "straight_through_quantize": [("argmax of the distance", (lambda z, e: _st_quantize(z, e, pick="far"),)),
                                  ("largest dot product", (lambda z, e: _st_quantize(z, e, pick="dot"),)),
                                  ("no straight-through", (lambda z, e: _st_quantize(z, e, through="none"),)),
                                  ("straight-through backwards",
                                   (lambda z, e: _st_quantize(z, e, through="backwards"),)),
                                  ("no detach", (lambda z, e: _st_quantize(z, e, through="undetached"),))],
    "residual_quantize": [("no subtraction", (lambda f, e, s: _ms_quantize(f, e, s, subtract=False),)),
                          ("nearest upsampling", (lambda f, e, s: _ms_quantize(f, e, s, up="nearest"),)),
                          ("bilinear downsampling", (lambda f, e, s: _ms_quantize(f, e, s, down="bilinear"),)),
                          ("f_hat is the last scale only", (lambda f, e, s: _ms_quantize(f, e, s, accumulate=False),))],
    "sjd_verify": [("accept iff p >= q", (lambda p, q, d, u: _verify(p, q, d, u, accept=lambda u, p, q: p >= q),)),
                   ("residual max(0, q - p)",
                    (lambda p, q, d, u: _verify(p, q, d, u, residual=lambda p, q: (q - p).clamp_min(0)),)),
                   ("no stop after the rejection", (lambda p, q, d, u: _verify(p, q, d, u, stop=False),)),
                   ("replacement drawn from p", (lambda p, q, d, u: _verify(p, q, d, u, residual=lambda p, q: p),)),
                   ("u <= p / q", (lambda p, q, d, u: _verify(p, q, d, u, accept=lambda u, p, q: u * q <= p),))],
    "lantern_proximity": [("counts x's own mass", (lambda p, x, n, d: _proximity(p, x, n, d, own=True),)),
                          ("strict < delta", (lambda p, x, n, d: _proximity(p, x, n, d, strict=True),)),
                          ("every light neighbour", (lambda p, x, n, d: _proximity(p, x, n, d, each=True),)),
                          ("forgets x", (lambda p, x, n, d: _proximity(p, x, n, d, keep_x=False),))],
    "maskgit_plan": [("rounded up", (lambda T, n, s: _tokens_plan(T, n, s, rounding=math.ceil),)),
                     ("schedule read one step early", (lambda T, n, s: _tokens_plan(T, n, s, shift=1),)),
                     ("no clamps", (lambda T, n, s: _tokens_plan(T, n, s, clamp=False),)),
                     ("still-masked counts", (lambda T, n, s: _tokens_plan(T, n, s, remaining=True),)),
                     ("no last step", (lambda T, n, s: _tokens_plan(T, n, s)[:-1],))],
    "mel_filterbank_matrix": [("equally spaced in Hz", (lambda m, n, sr: _mel_filters(m, n, sr, hz=True),)),
                              ("n_mels + 1 edges", (lambda m, n, sr: _mel_filters(m, n, sr, points=1),)),
                              ("unit area", (lambda m, n, sr: _mel_filters(m, n, sr, area=True),)),
                              ("negative sides left", (lambda m, n, sr: _mel_filters(m, n, sr, clamp=False),))],
    "ctc_forward_recursion": [("skip between equal labels",
                               (lambda lp, y, blank=0: _ctc_log_prob(lp, y, blank, skip_equal=True),)),
                              ("ends on the final blank only",
                               (lambda lp, y, blank=0: _ctc_log_prob(lp, y, blank, end="last"),)),
                              ("linear space", (lambda lp, y, blank=0: _ctc_log_prob(lp, y, blank, linear=True),)),
                              ("max (Viterbi)", (lambda lp, y, blank=0: _ctc_log_prob(lp, y, blank, viterbi=True),))],
    "ctc_greedy_collapse": [("blanks dropped first", (lambda x, blank=0: _collapse_wrong(x, blank),)),
                            ("blanks kept", (lambda x, blank=0: _collapse_wrong(x, blank, how="keep blanks"),)),
                            ("every duplicate removed", (lambda x, blank=0: _collapse_wrong(x, blank, how="set"),))],
    "cif_fire": [("whole crossing frame to the token", (lambda h, a, th=1.0: _integrate_fire(h, a, th, whole=True),)),
                 ("remainder dropped", (lambda h, a, th=1.0: _integrate_fire(h, a, th, drop=True),)),
                 ("fires on > threshold", (lambda h, a, th=1.0: _integrate_fire(h, a, th, strict=True),)),
                 ("incomplete last token fired", (lambda h, a, th=1.0: _integrate_fire(h, a, th, fire_last=True),))],
    "topk_latents": [("largest magnitude", (lambda pre, k: _sae_topk(pre, k, by="magnitude"),)),
                     ("smallest k", (lambda pre, k: _sae_topk(pre, k, by="smallest"),)),
                     ("no ReLU", (lambda pre, k: _sae_topk(pre, k, relu=False),)),
                     ("k + 1 kept", (lambda pre, k: _sae_topk(pre, k, shift=1) if k < pre.shape[-1] else pre,)),
                     ("only the k values", (lambda pre, k: torch.relu(pre.topk(k, dim=-1).values),)),
                     ("plain ReLU", (lambda pre, k: torch.relu(pre),))],
    "mean_max_cosine": [("dot products", (lambda t, u: _sae_mmcs(t, u, normalize=False),)),
                        ("max over the true features", (lambda t, u: _sae_mmcs(t, u, transpose=True),)),
                        ("absolute cosine", (lambda t, u: _sae_mmcs(t, u, absolute=True),)),
                        ("mean of all cosines", (lambda t, u: float((F.normalize(t, dim=1)
                                                                     @ F.normalize(u, dim=1).T).mean()),))],
    "bias_adaptation": [("no clip", (lambda *a: _sae_bias(*a, clip=False),)),
                        ("dead raised by its own r", (lambda *a: _sae_bias(*a, own_r=True),)),
                        ("group mean over all neurons", (lambda *a: _sae_bias(*a, group_mean="all"),)),
                        ("targets as set-points", (lambda *a: _sae_bias(*a, ceiling=False),)),
                        ("bias unchanged", (lambda pre, b, *rest: b.clone(),))],
    "find_latent": [("highest recall", (lambda f, m: _sae_latent(f, m, "recall"),)),
                    ("highest precision", (lambda f, m: _sae_latent(f, m, "precision"),)),
                    ("largest mean activation", (lambda f, m: _sae_latent(f, m, "mean"),)),
                    ("most true positives", (lambda f, m: _sae_latent(f, m, "jaccard_bug"),))],
    "read_through_table": [("physical order", (lambda pool, table, n: pool[:len(table)]
                                               .reshape(-1, *pool.shape[2:])[:n],)),
                           ("whole blocks", (lambda pool, table, n: pool[table].reshape(-1, *pool.shape[2:]),)),
                           ("blocks and slots swapped", (lambda pool, table, n: pool[table].transpose(0, 1)
                                                         .reshape(-1, *pool.shape[2:])[:n],))],
    "sink_window_mask": [("window only", (lambda T, s, w: _sink_mask(T, 0, w),)),
                         ("window off by one", (lambda T, s, w: _sink_mask(T, s, w + 1),)),
                         ("not causal", (lambda T, s, w: _sink_mask(T, s, w, causal=False),)),
                         ("sinks only", (lambda T, s, w: _sink_mask(T, s, 0),))],
    "quantize_per_channel": [("per token", (lambda k, b: _quant_rows(k, b),)),
                             ("truncated, not rounded", (lambda k, b: _quant_columns(k, b, rounding=torch.floor),)),
                             ("2^b levels of step", (lambda k, b: _quant_columns(k, b, levels=2 ** b),)),
                             ("symmetric around 0", (lambda k, b: _quant_symmetric(k, b),))],
    "low_rank_residual": [("approximates d", (lambda d, dh, r: _svd_rank(d, r),)),
                          ("one rank short", (lambda d, dh, r: _svd_rank(d - dh, r - 1),)),
                          ("the whole residual", (lambda d, dh, r: d - dh,)),
                          ("smallest singular values", (lambda d, dh, r: _svd_rank(d - dh, r, largest=False),))],
}
CASES = [(name, what, args) for name, wrongs in WRONG.items() for what, args in wrongs]


def test_every_check_has_wrong_answers_to_catch():
    checks = sorted(set(arlib.checks.__all__) - {"CheckFailed"})
    assert sorted(WRONG) == checks, "add wrong answers for every check of arlib.checks to WRONG"


@pytest.mark.parametrize("name, what, args", CASES, ids=[f"{n}-{w}" for n, w, _ in CASES])
def test_a_wrong_answer_fails_with_expected_and_hint(name, what, args):
    with pytest.raises(CheckFailed) as info:
        getattr(arlib.checks, name)(*args)
    message = str(info.value)
    assert re.match(r"Exercise \d+\.\d+ \(", message), message
    assert "expected" in message and "hint" in message and "got" in message, message


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_stub_is_reported_as_not_yet_implemented(name, capsys):
    arity = len(WRONG[name][0][1])
    with pytest.raises(CheckFailed, match="not yet implemented") as info:
        getattr(arlib.checks, name)(*([_stub] * arity))
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "cases pass" not in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_crash_is_reported_with_its_input(name):
    def crash(*args):
        raise ZeroDivisionError("division by zero")

    arity = len(WRONG[name][0][1])
    with pytest.raises(CheckFailed, match="your function raised ZeroDivisionError") as info:
        getattr(arlib.checks, name)(*([crash] * arity))
    assert "on the case" in str(info.value)
