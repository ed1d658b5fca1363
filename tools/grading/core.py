"""The grader's side: held-out cases, the subprocess that runs the learner's code, and the verdicts.

A :class:`Spec` says, for one exercise, which learner function(s) to call, which references to trap while they
run, how to draw held-out cases from a seed, how to compute the expected answer (in the grader's process,
with the real references) and how to compare. :func:`grade_cells` runs every exercise of a notebook in one
fresh subprocess (``tools/grading/runner.py``) and judges its outputs here, where the learner's code never ran.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.grading.runner import build_gpt, decode, encode

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("runner.py")


@dataclass
class Case:
    """One held-out input: the arguments, what it tests (for the report), and how the runner calls it."""

    args: tuple
    what: str
    kwargs: dict = field(default_factory=dict)
    kind: str = "call"  # "call", "grad" (4.1), "forward_count" (1.4) or "schedule" (4.5): see runner.call_case
    fn: int = 0  # which of the spec's functions to call
    extra: Any = None  # data the comparison needs and the runner must not see


@dataclass
class Spec:
    """How the grader tests one exercise (see the module docstring)."""

    number: str
    functions: tuple[str, ...]
    traps: tuple[str, ...]
    cases: Callable[[np.random.Generator], list[Case]]
    expected: Callable[[Case], Any]
    compare: Callable[[Any, Any, Case], str | None]  # None when right, else a short reason


@dataclass
class Verdict:
    number: str
    status: str  # "pass", "fail", "not yet implemented"
    reason: str


def seed_for(student: str, number: str) -> int:
    """The seed of one student's held-out cases for one exercise: different students get different cases."""
    digest = hashlib.sha256(f"arlib-grading|{student}|{number}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_cases(spec: Spec, student: str) -> list[Case]:
    return spec.cases(np.random.default_rng(seed_for(student, spec.number)))


# ------------------------------------------------------------------------------------------------ comparisons


def number_of(got) -> float | None:
    """A float for a number or a one-element tensor / array (not a bool); None for anything else."""
    if isinstance(got, (bool, np.bool_)):
        return None
    if isinstance(got, (int, float, np.integer, np.floating)):
        return float(got)
    if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype != torch.bool and not got.is_complex():
        return float(got.item())
    if isinstance(got, np.ndarray) and got.size == 1 and got.dtype.kind in "iuf":
        return float(got.item())
    return None


def int_of(got) -> int | None:
    """An int for an int or a one-element integer tensor; None for floats, bools and anything else."""
    if isinstance(got, bool):
        return None
    if isinstance(got, (int, np.integer)):
        return int(got)
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point() and got.dtype != torch.bool:
        return int(got.item())
    return None


def ids_of(got) -> list[int] | None:
    """A list of ints for a list / tuple of ints or a 1-D integer tensor; None otherwise."""
    if isinstance(got, torch.Tensor):
        if got.dim() != 1 or got.is_floating_point() or got.dtype == torch.bool:
            return None
        return [int(v) for v in got.tolist()]
    if isinstance(got, (list, tuple)):
        out = [int_of(v) for v in got]
        return None if any(v is None for v in out) else out
    return None


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, dict) and "type" in x:
        return f"a {x['type']}"
    text = repr(x)
    return text if len(text) < 80 else text[:77] + "..."


def tensor_close(got, expected: torch.Tensor, atol: float, rtol: float = 0.0, float_only: bool = True) -> str | None:
    """None if ``got`` is a tensor of ``expected``'s shape within the tolerances (nan nowhere), else why not."""
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor, got {describe(got)}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if float_only and not got.is_floating_point() and expected.is_floating_point():
        return f"dtype {got.dtype}, expected a float tensor"
    g, e = got.double(), expected.double()
    if not torch.allclose(g, e, atol=atol, rtol=rtol, equal_nan=False):
        diff = (g - e).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
        return f"max difference {float(diff.max()):.3g} (tolerance {atol:g})"
    return None


def number_close(got, expected: float, atol: float, rtol: float = 0.0) -> str | None:
    value = number_of(got)
    if value is None:
        return f"expected a number, got {describe(got)}"
    if math.isinf(expected) or math.isnan(expected):
        return None if value == expected else f"got {value:.6g}, expected {expected}"
    if not abs(value - expected) <= atol + rtol * abs(expected):
        return f"got {value:.8g}, expected {expected:.8g}"
    return None


def close(atol: float, rtol: float = 0.0) -> Callable[[Any, Any, Case], str | None]:
    """A comparison of a tensor or a number with the expected one."""
    def compare(got, expected, case):
        if isinstance(expected, torch.Tensor):
            return tensor_close(got, expected, atol, rtol)
        return number_close(got, float(expected), atol, rtol)
    return compare


def same_int(got, expected, case) -> str | None:
    value = int_of(got)
    if value is None:
        return f"expected an int, got {describe(got)}"
    return None if value == int(expected) else f"got {value}, expected {int(expected)}"


def same_ids(got, expected, case) -> str | None:
    ids = ids_of(got)
    if ids is None:
        return f"expected a list of ints, got {describe(got)}"
    return None if ids == list(expected) else f"got {ids[:12]}, expected {list(expected)[:12]}"


def same_tensor(got, expected: torch.Tensor, case) -> str | None:
    """Exactly equal values and dtype kind (bool to bool, ids to ids)."""
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor, got {describe(got)}"
    if got.dtype != expected.dtype and (got.dtype == torch.bool) != (expected.dtype == torch.bool):
        return f"dtype {got.dtype}, expected {expected.dtype}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    return None if torch.equal(got.to(expected.dtype), expected) else "values differ"


def t(array, dtype=torch.float64) -> torch.Tensor:
    """A tensor from numpy or lists (the case generators draw with numpy's seeded generator)."""
    return torch.as_tensor(np.asarray(array)).to(dtype)


def gpt_of(description: dict):
    return build_gpt(description["gpt"])


# ------------------------------------------------------------------------------------------------ running


def _blocked_dirs(root: Path) -> tuple[list[str], list[str]]:
    """What the runner's audit hook refuses to open: the whole book but the package's own modules and the venv."""
    allowed = [str(root / "arlib"), str(root / ".venv"), sys.prefix]
    return [str(root)], [a for a in allowed if Path(a).exists()]


def run_learner(setup: str, cells: dict[str, str], specs: list[Spec], cases: dict[str, list[Case]], cwd: Path,
                root: Path = ROOT, timeout: int = 600) -> tuple[dict, dict, str]:
    """Run the learner's solution cells in a fresh interpreter; return its outputs, arrays and stderr tail."""
    arrays: dict = {}
    exercises = []
    for spec in specs:
        exercises.append({
            "number": spec.number, "source": cells.get(spec.number, ""), "functions": list(spec.functions),
            "cases": [{"args": encode(list(c.args), arrays, inputs=True)["list"],
                       "kwargs": {k: encode(v, arrays, inputs=True) for k, v in c.kwargs.items()},
                       "kind": c.kind, "fn": c.fn} for c in cases[spec.number]],
        })
    blocked, allowed = _blocked_dirs(root)
    seconds = int(os.environ.get("ARLIB_GRADE_SECONDS", "120"))  # per exercise; the tests shorten it
    job = {"setup": setup, "exercises": exercises, "blocked_dirs": blocked, "allowed_dirs": allowed,
           "seconds_per_exercise": seconds,
           "traps": {dotted: spec.number for spec in specs for dotted in spec.traps}}
    with tempfile.TemporaryDirectory(prefix="arlib-grade-") as tmp:
        tmp = Path(tmp)
        (tmp / "job.json").write_text(json.dumps(job), encoding="utf-8")
        np.savez(tmp / "inputs.npz", **arrays)
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(root)}
        env.setdefault("ARLIB_THREADS", "1")
        try:
            proc = subprocess.run([sys.executable, str(RUNNER), str(tmp)], cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=timeout)
            tail = (proc.stderr or "")[-2000:]
        except subprocess.TimeoutExpired:
            return {}, {}, f"the exercises did not finish within {timeout} s"
        if not (tmp / "outputs.json").is_file():
            return {}, {}, tail or f"the runner stopped with exit code {proc.returncode}"
        try:
            outputs = json.loads((tmp / "outputs.json").read_text(encoding="utf-8"))
            with np.load(tmp / "outputs.npz", allow_pickle=False) as data:
                out_arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError) as exc:
            return {}, {}, f"unreadable outputs: {exc}"
    return outputs, out_arrays, tail


def judge(spec: Spec, cases: list[Case], result: dict | None, arrays: dict) -> Verdict:
    """The verdict on one exercise from the runner's raw outputs, against the references run here."""
    if not isinstance(result, dict):
        return Verdict(spec.number, "fail", "the exercise did not run")
    if "cell_error" in result:
        err = result["cell_error"]
        return Verdict(spec.number, "fail", f"the solution cell raised {err.get('error')}: {err.get('message')}")
    if "missing" in result:
        return Verdict(spec.number, "fail", f"no function named {', '.join(map(str, result['missing']))}")
    got_all = result.get("cases")
    if not isinstance(got_all, list) or not got_all:
        return Verdict(spec.number, "fail", "no outputs")
    for k, case in enumerate(cases):
        if k >= len(got_all) or not isinstance(got_all[k], dict):
            return Verdict(spec.number, "fail", f"no output for case {k + 1} ({case.what})")
        got = got_all[k]
        if "error" in got:
            if got.get("kind") == "not yet implemented":
                return Verdict(spec.number, "not yet implemented", "the function raises NotImplementedError")
            return Verdict(spec.number, "fail", f"case {k + 1} ({case.what}): raised {got['error']}: "
                           f"{str(got.get('message', ''))[:300]}")
        try:
            value = decode(got.get("value"), arrays)
        except (KeyError, TypeError, ValueError) as exc:
            return Verdict(spec.number, "fail", f"case {k + 1}: unreadable output ({exc})")
        if value is None:
            return Verdict(spec.number, "fail", f"case {k + 1} ({case.what}): the function returned None")
        try:
            reason = spec.compare(value, spec.expected(case), case)
        except Exception as exc:  # noqa: BLE001  (a malformed answer the comparison did not foresee)
            reason = f"an answer of the wrong form ({type(exc).__name__}: {exc})"
        if reason is not None:
            return Verdict(spec.number, "fail", f"case {k + 1} of {len(cases)} ({case.what}): {reason}")
    return Verdict(spec.number, "pass", f"all {len(cases)} held-out cases pass")
