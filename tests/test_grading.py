"""The grader students cannot fool (``python tools/classroom.py grade``, ``tools/grading``).

The grader runs a learner's solution cells in a fresh interpreter with the references trapped, calls them on
held-out cases drawn from the student's seed and judges the outputs in its own process. These tests hold it
to that: the book's solutions pass every exercise of every chapter, the stubs do not, and the known ways to
fool the old grader (patching ``arlib.checks``, calling the reference under any of its names, reloading or
re-importing its module, reading the book's notebook, starting a fresh interpreter, hard-coding the answers
of the in-notebook checks) all fail. Each notebook is graded in one subprocess, about 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [] if str(REPO) in sys.path else [str(REPO)]  # the tools package, when run from elsewhere

from tools import classroom, grading  # noqa: E402
from tools.grading.runner import encode  # noqa: E402

ROOT = Path(os.environ.get("BOOK_TEST_ROOT", REPO)).resolve()
CHAPTERS = [ch for ch in classroom.chapters(root=ROOT) if (ROOT / ch.notebook).is_file()]
IDS = [ch.notebook.rsplit("/", 1)[-1].removesuffix(".ipynb") for ch in CHAPTERS]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("ARLIB_THREADS", "1")


def _chapter(number: str):
    return next(ch for ch in CHAPTERS if ch.number == number)


def _submitted(tmp_path: Path, number: str, replace: dict[str, str] | None = None, student: bool = False) -> Path:
    """The book's notebook of chapter ``number`` (or its student version) with some solution cells replaced."""
    ch = _chapter(number)
    nb = nbformat.read(ROOT / ch.notebook, as_version=4)
    if student:
        nb = classroom.student_version(nb)
    for ex in classroom.find_exercises(nb, ch.notebook, strict=False):
        if replace and ex.number in replace:
            nb.cells[ex.solution_cell].source = textwrap.dedent(replace[ex.number]).strip()
    path = tmp_path / Path(ch.notebook).name
    nbformat.write(nb, path)
    return path


def _verdicts(path: Path) -> dict:
    return {v.number: v for v in classroom.grade(path, ROOT)}


# ----------------------------------------------------------------------------------------- every chapter


def test_every_exercise_has_a_grading_spec():
    for ch in CHAPTERS:
        found = classroom.find_exercises(nbformat.read(ROOT / ch.notebook, as_version=4), ch.notebook)
        specs = grading.specs(ch.number)
        assert [s.number for s in specs] == [e.number for e in found], f"{ch.notebook}: specs and exercises differ"
        nb = nbformat.read(ROOT / ch.notebook, as_version=4)
        for spec, ex in zip(specs, found, strict=True):
            for name in spec.functions:
                assert f"def {name}(" in nb.cells[ex.solution_cell].source, f"{spec.number}: no function {name}"


@pytest.mark.slow
@pytest.mark.parametrize("ch", CHAPTERS, ids=IDS)
def test_the_books_solutions_pass_on_held_out_cases(ch, tmp_path):
    verdicts = _verdicts(_submitted(tmp_path, ch.number))
    failed = {n: f"{v.status}: {v.reason}" for n, v in verdicts.items() if v.status != "pass"}
    assert not failed, f"{ch.notebook}: {failed}"


@pytest.mark.slow
def test_the_stubs_fail_and_the_command_says_so(tmp_path, capsys, monkeypatch):
    """Stubs are "not yet implemented"; an endless loop fails its own exercise only, after its time runs out."""
    monkeypatch.setenv("ARLIB_GRADE_SECONDS", "3")
    endless = "def class_means(images, labels, num_classes):\n    while True:\n        pass"
    path = _submitted(tmp_path, "00", {"0.2": endless}, student=True)
    assert classroom.main(["grade", str(path), "--root", str(ROOT)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: 0/4 exercises pass" in out
    assert out.count("| not yet implemented |") == 3, out
    assert "| 0.2 | fail | case 1 " in out and "OutOfTime" in out, out


# ----------------------------------------------------------------------------------------- attacks

CHAPTER_1_ATTACKS = {
    # a hard-coded answer for the in-notebook check's fixed inputs
    "1.1": """
        def perplexity(log_probs):
            known = {5: 1.0, 7: 84.0, 3: 4.0, 1: math.exp(1.3), 2: math.inf}
            return known.get(len(log_probs), 1.0)
        """,
    # delegation to the reference, through the package's attributes
    "1.2": """
        def top_p_filter(logits, p):
            return arlib.text.sampling.top_p(logits, p)
        """,
    # the book's own solution, read from the chapter's notebook
    "1.3": """
        import json, pathlib
        def cached_attention(q, k_new, v_new, k_cache, v_cache):
            cells = json.loads(pathlib.Path("01-ar-factorization.ipynb").read_text())["cells"]
            source = next("".join(c["source"]) for c in cells if "def cached_attention" in "".join(c["source"]))
            namespace = {"torch": torch, "math": math}
            exec(source, namespace)
            return namespace["cached_attention"](q, k_new, v_new, k_cache, v_cache)
        """,
    "1.4": """
        def continuation_log_prob(model, prompt_ids, continuation_ids):
            raise NotImplementedError()
        """,
    # issue 23's attack: a wrong answer, and the check it is graded by patched to print a pass
    "1.5": """
        def kl_divergence(p, q):
            return 0.0
        arlib.checks.kl_divergence = lambda fn: print("Exercise 1.5 (KL divergence): all 5 cases pass.")
        """,
    # the reference's module imported a second time, under another name
    "1.6": """
        import importlib.util
        def kneser_ney_bigram(counts, D):
            spec = importlib.util.spec_from_file_location("my_ngram", arlib.text.ngram.__file__)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            raise AssertionError("the grader let the module be imported again")
        """,
}

CHAPTER_5_ATTACKS = {
    # the reference under the name the chapter's setup cell imported it by
    "5.1": """
        def mel_triangles(n_mels, n_fft, sample_rate):
            return mel_filterbank(n_mels, n_fft, sample_rate)
        """,
    # the same computation in torch
    "5.2": """
        def ctc_log_prob(log_probs, target, blank=0):
            loss = F.ctc_loss(log_probs[:, None], torch.tensor([target], dtype=torch.long), [len(log_probs)],
                              [len(target)], blank=blank, reduction="sum")
            return -float(loss)
        """,
    # a fresh copy of the module, by reloading it
    "5.3": """
        import importlib
        import arlib.speech.ctc
        def ctc_collapse(frame_labels, blank=0):
            fresh = importlib.reload(arlib.speech.ctc)
            return fresh.greedy_decode(torch.eye(max(frame_labels + [blank]) + 1)[frame_labels][None], blank)[0]
        """,
    # a fresh interpreter, which would have no traps
    "5.4": """
        import subprocess, sys
        def integrate_and_fire(hidden, alpha, threshold=1.0):
            subprocess.run([sys.executable, "-c", "print(1)"], check=True)
            raise AssertionError("the grader let a process start")
        """,
}


@pytest.mark.slow
def test_the_attacks_on_chapter_1_fail(tmp_path):
    v = _verdicts(_submitted(tmp_path, "01", CHAPTER_1_ATTACKS))
    assert {n: r.status for n, r in v.items()} == {"1.1": "fail", "1.2": "fail", "1.3": "fail",
                                                   "1.4": "not yet implemented", "1.5": "fail", "1.6": "fail"}
    assert "got" in v["1.1"].reason
    assert "ReferenceTrap" in v["1.2"].reason and "write the function" in v["1.2"].reason.lower()
    assert "PermissionError" in v["1.3"].reason
    assert "got 0, expected" in v["1.5"].reason
    assert "PermissionError" in v["1.6"].reason


@pytest.mark.slow
def test_the_attacks_on_chapter_5_fail(tmp_path):
    v = _verdicts(_submitted(tmp_path, "05", CHAPTER_5_ATTACKS))
    assert {n: r.status for n, r in v.items()} == dict.fromkeys(("5.1", "5.2", "5.3", "5.4"), "fail")
    assert "ReferenceTrap" in v["5.1"].reason and "mel_filterbank" in v["5.1"].reason
    assert "ReferenceTrap" in v["5.2"].reason
    assert "PermissionError" in v["5.3"].reason or "ImportError" in v["5.3"].reason
    assert "PermissionError" in v["5.4"].reason and "subprocess" in v["5.4"].reason


TRAP_SCRIPT = """
import functools, importlib, importlib.util, inspect, socket, subprocess, sys, types
sys.path.insert(0, {tmp!r})
sys.path.insert(0, {runner_dir!r})
import refmod, user
import runner

def calls(fn, *args):
    try:
        fn(*args)
    except runner.ReferenceTrap:
        return "trap"
    except OSError:  # the audit hook's PermissionError, or inspect's "could not get source code" after it
        return "refused"
    except Exception as exc:
        return type(exc).__name__
    return "ran"

files = runner.install_traps({{"refmod.reference": "9.9", "refmod.wrapper": "9.9", "refmod.closure": "9.9",
                              "refmod.Table.lookup": "9.9"}})
runner.guard(files, [], [])
copy = types.FunctionType(user.alias.__code__, {{}})
out = {{
    "module": calls(refmod.reference, 1), "alias": calls(user.alias, 1), "copy": calls(copy, 1),
    "wrapper": calls(refmod.wrapper, 1), "wrapped": calls(inspect.unwrap(refmod.wrapper), 1),
    "inner": calls(refmod._inner, 1),
    "closure": calls(refmod.closure, 1), "method": calls(refmod.Table().lookup, 1),
    "reload": calls(importlib.reload, refmod),
    "source": calls(lambda: open(refmod.__file__).read()),
    "getsource": calls(inspect.getsource, refmod),
    "network": calls(socket.getaddrinfo, "localhost", 80),
    "process": calls(subprocess.run, [sys.executable, "-c", "pass"]),
}}
print(out)
"""


def test_the_traps_cover_aliases_wrappers_reload_and_the_source(tmp_path):
    """The trap mechanism itself, on a small module, in a subprocess (traps change the interpreter for good)."""
    (tmp_path / "refmod.py").write_text(textwrap.dedent("""
        import functools

        def reference(x):
            return x + 1

        def _inner(x):
            return x * 2

        @functools.wraps(_inner)
        def wrapper(x):
            return _inner(x)

        def _make():
            k = 3
            def closure(x):
                return x + k
            return closure

        closure = _make()

        class Table:
            def lookup(self, x):
                return x
        """))
    (tmp_path / "user.py").write_text("from refmod import reference as alias\n")
    script = TRAP_SCRIPT.format(tmp=str(tmp_path), runner_dir=str(REPO / "tools" / "grading"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = eval(proc.stdout.strip().splitlines()[-1])  # a dict literal of strings, printed by the script
    assert out == {"module": "trap", "alias": "trap", "copy": "trap", "wrapper": "trap", "wrapped": "trap",
                   "inner": "trap",
                   "closure": "trap", "method": "trap", "reload": "refused", "source": "refused",
                   "getsource": "refused", "network": "refused", "process": "refused"}, out


# ----------------------------------------------------------------------------------------- the cases


def _inputs(cases) -> str:
    arrays: dict = {}
    text = json.dumps([encode(list(c.args), arrays, inputs=True) for c in cases], sort_keys=True)
    return text + "".join(f"{k}:{np.asarray(v).tobytes().hex()}" for k, v in sorted(arrays.items()))


@pytest.mark.parametrize("number", sorted(grading.all_specs()))
def test_two_students_get_different_cases_and_one_student_the_same(number):
    spec = grading.all_specs()[number]
    alice, bob = grading.make_cases(spec, "alice"), grading.make_cases(spec, "bob")
    assert _inputs(alice) != _inputs(bob), f"exercise {number}: alice and bob got the same cases"
    assert _inputs(alice) == _inputs(grading.make_cases(spec, "alice")), f"exercise {number}: not reproducible"
    assert grading.seed_for("alice", number) != grading.seed_for("bob", number)


def test_the_cases_are_not_stored_with_the_checks():
    """The held-out cases' generators live in tools/grading, which the grading subprocess cannot read."""
    import arlib.checks

    checks_dir = Path(arlib.checks.__file__).parent
    assert not any("tools.grading" in p.read_text(encoding="utf-8") for p in checks_dir.glob("*.py"))
