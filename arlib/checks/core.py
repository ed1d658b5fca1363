"""The machinery shared by every exercise check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CheckFailed(AssertionError):
    """An exercise check did not pass; the message explains what was expected and gives a hint."""


class Check:
    """Runs one exercise's cases: ``with Check("1.2", "top-p filtering") as c: c.call(fn, x)...``."""

    def __init__(self, exercise: str, title: str):
        self.exercise, self.title, self.cases = exercise, title, 0

    def __enter__(self) -> Check:
        return self

    def __exit__(self, kind, value, tb) -> bool:
        if kind is None:
            print(f"Exercise {self.exercise} ({self.title}): all {self.cases} cases pass.")
        return False

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """Call the learner's function; a stub is reported as not yet implemented, other errors as such."""
        if not callable(fn):
            raise CheckFailed(f"Exercise {self.exercise}: expected a function, got {type(fn).__name__}.")
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

    def close(self, got, expected, what: str, hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
        """Expect ``got`` to be a tensor (or number) close to ``expected`` with the same shape."""
        got_t = torch.as_tensor(got) if not isinstance(got, torch.Tensor) else got
        exp_t = torch.as_tensor(expected) if not isinstance(expected, torch.Tensor) else expected
        if got_t.shape != exp_t.shape:
            self.expect(False, f"{what} (shape)", tuple(exp_t.shape), tuple(got_t.shape), hint)
        ok = torch.allclose(got_t.double().cpu(), exp_t.double().cpu(), atol=atol, rtol=rtol, equal_nan=False)
        self.expect(bool(ok), what, exp_t, got_t, hint)


def _short(x: Any, limit: int = 160) -> str:
    if isinstance(x, torch.Tensor):
        text = f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}: {x.flatten()[:8].tolist()}"
        text += " ..." if x.numel() > 8 else ""
    else:
        text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(args: tuple) -> str:
    return ", ".join(_short(a, 60) for a in args)
