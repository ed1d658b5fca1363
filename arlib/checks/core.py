"""The machinery shared by every exercise check."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from arlib.validate import is_int, is_number


class CheckFailed(AssertionError):
    """An exercise check did not pass; the message explains what was expected and gives a hint."""


class Check:
    """Runs one exercise's cases: ``with Check("1.2", "top-p filtering") as c: c.call(fn, x)...``."""

    def __init__(self, exercise: str, title: str):
        for name, value in (("exercise", exercise), ("title", title)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name}: expected a non-empty str, got {value!r}")
        self.exercise, self.title, self.cases = exercise, title, 0
        self.returned = False  # has the learner's function returned once (so that its result is being checked)?

    def __enter__(self) -> Check:
        return self

    def __exit__(self, kind, value, tb) -> bool:
        if kind is None:
            print(f"Exercise {self.exercise} ({self.title}): all {self.cases} cases pass.")
        elif self.returned and issubclass(kind, Exception) and not issubclass(kind, CheckFailed):
            # The learner's function returned, but its result could not even be compared (a list where a
            # tensor was due, a tuple of the wrong length, ...): say so instead of showing the check's insides.
            raise CheckFailed(
                f"Exercise {self.exercise} ({self.title}): the check could not use what your function returned "
                f"(after {self.cases} passing cases)\n  expected: a result of the type and shape the exercise "
                f"states\n  got:      something that raised {kind.__name__}: {_short(str(value))}\n"
                "  hint: read the exercise's signature again: the type, shape and dtype of what to return") from value
        return False

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """Call the learner's function; a stub is reported as not yet implemented, other errors as such."""
        if not callable(fn):
            raise CheckFailed(f"Exercise {self.exercise} ({self.title}): expected a function, got "
                              f"{type(fn).__name__}.")
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise CheckFailed(
                f"Exercise {self.exercise} ({self.title}): your function cannot be called with the exercise's "
                f"{len(args) + len(kwargs)} arguments ({exc})\n  on the case: {_describe(args)}\n"
                "  hint: define it with the parameters the exercise states") from None
        except ValueError:
            pass  # no signature to read (some builtins): the call itself will tell
        try:
            result = fn(*args, **kwargs)
        except NotImplementedError:
            raise CheckFailed(
                f"Exercise {self.exercise} ({self.title}): not yet implemented. Replace "
                "`raise NotImplementedError()` with your solution and run the cell again.") from None
        except CheckFailed:
            raise
        except Exception as exc:
            raise CheckFailed(
                f"Exercise {self.exercise} ({self.title}): your function raised {type(exc).__name__}: {exc}\n"
                f"  on the case: {_describe(args)}") from exc
        self.returned = True
        if result is None:
            raise CheckFailed(f"Exercise {self.exercise} ({self.title}): your function returned None. "
                              "Did you forget a `return` statement?")
        return result

    def expect(self, ok: bool, what: str, expected: Any, got: Any, hint: str) -> None:
        """Record one case; fail with a full explanation if ``ok`` is false."""
        self.cases += 1
        if not ok:
            raise CheckFailed(
                f"Exercise {self.exercise} ({self.title}): {what}\n"
                f"  expected: {_short(expected)}\n  got:      {_short(got)}\n  hint: {hint}")

    def number(self, got, what: str, hint: str) -> float:
        """``got`` as a float (:func:`as_number`); a failed case saying so when it is not a single number."""
        value = as_number(got)
        self.expect(value is not None, f"{what} (a single number)", "a float", got, hint)
        return value

    def close(self, got, expected, what: str, hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
        """Expect ``got`` to be a tensor (or number) close to ``expected`` with the same shape."""
        try:
            got_t = torch.as_tensor(got) if not isinstance(got, torch.Tensor) else got
        except (TypeError, ValueError, RuntimeError):
            got_t = None
        if got_t is None or got_t.is_complex():
            self.expect(False, f"{what} (its type)", "a real tensor (or number)", got, hint)
        exp_t = torch.as_tensor(expected) if not isinstance(expected, torch.Tensor) else expected
        if got_t.shape != exp_t.shape:
            self.expect(False, f"{what} (shape)", tuple(exp_t.shape), tuple(got_t.shape), hint)
        ok = torch.allclose(got_t.double().cpu(), exp_t.double().cpu(), atol=atol, rtol=rtol, equal_nan=False)
        self.expect(bool(ok), what, exp_t, got_t, hint)


def as_number(got) -> float | None:
    """A Python float for a real number (any ``numbers.Real``, numpy's included) or a one-element real tensor
    or array; None for anything else (bools included)."""
    if isinstance(got, (bool, np.bool_)):
        return None
    if is_number(got):
        return float(got)
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_complex() and got.dtype != torch.bool:
        return float(got.item())
    if isinstance(got, np.ndarray) and got.size == 1 and got.dtype.kind in "iuf":
        return float(got.item())
    return None


def as_integer(got) -> int | None:
    """A Python int for an int (or numpy / one-element integer tensor); None for anything else, floats included."""
    if isinstance(got, (bool, np.bool_)):
        return None
    if is_int(got):
        return int(got)
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point() and got.dtype != torch.bool:
        return int(got.item())
    return None


def is_index_tensor(x) -> bool:
    """Is ``x`` a tensor of integer ids (an integer dtype: not floating, complex or bool)?"""
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool


def as_token_list(got) -> list[int] | None:
    """A list of ints for a 1-D integer tensor or a list / tuple of ints; None for anything else."""
    if isinstance(got, torch.Tensor):
        return [int(t) for t in got.tolist()] if is_index_tensor(got) and got.dim() == 1 else None
    if isinstance(got, (list, tuple)):
        tokens = [as_integer(t) for t in got]
        return None if any(t is None for t in tokens) else tokens
    return None


def _short(x: Any, limit: int = 160) -> str:
    if isinstance(x, torch.Tensor):
        text = f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}: {x.flatten()[:8].tolist()}"
        text += " ..." if x.numel() > 8 else ""
    else:
        text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(args: tuple) -> str:
    return ", ".join(_short(a, 60) for a in args)
