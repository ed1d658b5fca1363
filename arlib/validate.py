"""Argument checks shared by every part of arlib: one place for the idioms the package repeats.

Each helper returns the value it checked (so that it can be used inline) or raises ``ValueError`` whose
message names the argument and says what was expected: ``"gamma: expected an int >= 1, got 0"``. A value
of the wrong type raises ``ValueError`` too, with the same message, as the package always has: a caller
catches one error type for every bad argument. ``expected`` replaces the default description where a
function says more (``"a positive number of steps"``); the message keeps the form
``"{name}: expected {expected}, got {value!r}"``.

Integers are every ``numbers.Integral`` (Python ``int``, numpy's integer scalars) and never ``bool``
(``True`` is an ``int`` to Python, but never a count here); numbers are every ``numbers.Real`` (``int``,
``float``, numpy's integer and floating scalars), again not ``bool`` (nor numpy's ``bool_``). The integer
helpers return a Python ``int``. This module is part of the shared core: it imports only the standard
library and torch, never another part of arlib.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["describe", "is_int", "is_number", "positive_int", "int_at_least", "int_in_range", "number_in",
           "probability", "token_ids", "ids_in_vocab", "float_tensor", "generator", "MissingFileError"]


def describe(x) -> str:
    """How an error message shows a value that should have been a tensor: ``"(2, 3) torch.int64"`` for a
    tensor (its shape and dtype), the type's name (``"list"``) for anything else."""
    return f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def is_int(value) -> bool:
    """Is ``value`` an integer (a ``numbers.Integral``: ``int``, ``numpy.int64``, ...) and not a bool?"""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """Is ``value`` a real number (a ``numbers.Real``: ``int``, ``float``, ``numpy.float32``, ...) and not a
    bool? NaN and the infinities are numbers here; range checks (:func:`number_in`) reject them."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(name: str, expected: str, value) -> ValueError:
    return ValueError(f"{name}: expected {expected}, got {value!r}")


# --- integers -------------------------------------------------------------------------------------


def positive_int(value, name: str, *, expected: str = "a positive int") -> int:
    """``value`` if it is an int >= 1, else ``ValueError("{name}: expected a positive int, got ...")``."""
    if not is_int(value) or value < 1:
        raise _fail(name, expected, value)
    return int(value)


def int_at_least(value, name: str, low: int, *, expected: str | None = None) -> int:
    """``value`` if it is an int >= ``low``, else ``ValueError("{name}: expected an int >= {low}, got ...")``."""
    if not is_int(value) or value < low:
        raise _fail(name, expected or f"an int >= {low}", value)
    return int(value)


def int_in_range(value, name: str, low: int, high: int, *, expected: str | None = None) -> int:
    """``value`` if it is an int in ``[low, high]`` (both included), else
    ``ValueError("{name}: expected an int in [{low}, {high}], got ...")``."""
    if not is_int(value) or not low <= value <= high:
        raise _fail(name, expected or f"an int in [{low}, {high}]", value)
    return int(value)


# --- real numbers ---------------------------------------------------------------------------------


def number_in(value, name: str, low: float, high: float = math.inf, *, bounds: str = "[]",
              expected: str | None = None) -> int | float:
    """``value`` if it is a number between ``low`` and ``high``, else ``ValueError``.

    ``bounds`` says which ends are included, in interval notation: ``"[]"`` both (the default), ``"(]"``
    not ``low``, ``"[)"`` not ``high``, ``"()"`` neither. NaN is never in range. The default message reads
    ``"{name}: expected a number in (0, 1], got ..."``, or ``"a number > 0"`` when ``high`` is infinite.
    """
    if len(bounds) != 2 or bounds[0] not in "[(" or bounds[1] not in "])":
        raise ValueError(f"bounds: expected one of '[]', '(]', '[)', '()', got {bounds!r}")
    above = is_number(value) and (low < value if bounds[0] == "(" else low <= value)
    if not (above and (value < high if bounds[1] == ")" else value <= high)):
        if expected is None:
            expected = (f"a number {'>' if bounds[0] == '(' else '>='} {low}" if high == math.inf
                        else f"a number in {bounds[0]}{low}, {high}{bounds[1]}")
        raise _fail(name, expected, value)
    return value


def probability(value, name: str, *, expected: str = "a number in [0, 1]") -> int | float:
    """``value`` if it is a number in [0, 1], else ``ValueError("{name}: expected a number in [0, 1], got ...")``."""
    return number_in(value, name, 0, 1, expected=expected)


# --- tensors of token ids -------------------------------------------------------------------------


def token_ids(ids, name: str, *, dim: int | tuple[int, ...] = 1, rows: int | None = None,
              vocab_size: int | None = None, expected: str | None = None) -> torch.Tensor:
    """``ids`` if it is a ``torch.long`` tensor with ``dim`` dimensions (one count, or a tuple of the
    allowed ones) and, if ``rows`` is given, that many rows; else ``ValueError("{name}: expected
    {expected}, got {shape} {dtype}")`` (the type's name for a non-tensor). With ``vocab_size``, every id
    must also lie in ``[0, vocab_size)`` (:func:`ids_in_vocab`)."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() not in dims \
            or (rows is not None and ids.shape[0] != rows):
        if expected is None:
            expected = f"a {' or '.join(f'{d}-D' for d in dims)} torch.long tensor of token ids"
        raise ValueError(f"{name}: expected {expected}, got {describe(ids)}")
    if vocab_size is not None:
        ids_in_vocab(ids, name, vocab_size)
    return ids


def ids_in_vocab(ids: torch.Tensor, name: str, vocab_size: int) -> torch.Tensor:
    """``ids`` if every id lies in ``[0, vocab_size)`` (an empty tensor passes), else
    ``ValueError("{name}: token ids must lie in [0, {vocab_size})")``."""
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{name}: token ids must lie in [0, {vocab_size})")
    return ids


# --- tensors of real numbers ----------------------------------------------------------------------


def float_tensor(t, name: str, *, dim: int | tuple[int, ...] | None = None, finite: bool = True,
                 expected: str | None = None) -> torch.Tensor:
    """``t`` if it is a floating-point torch tensor with ``dim`` dimensions (one count, or a tuple of the
    allowed ones; any by default) and, with ``finite`` (the default), no NaN or inf; else
    ``ValueError("{name}: expected {expected}, got {shape} {dtype}")`` (the type's name for a non-tensor) or
    ``ValueError("{name}: contains NaN or inf")``. The finiteness scan reads every entry once (on an
    accelerator it makes the host wait): call it once per public call, not inside inner loops."""
    dims = None if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or (dims is not None and t.dim() not in dims):
        if expected is None:
            shape = "" if dims is None else " or ".join(f"{d}-D" for d in dims) + " "
            expected = f"a {shape}floating-point torch tensor"
        raise ValueError(f"{name}: expected {expected}, got {describe(t)}")
    if finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return t


def generator(value, name: str = "generator", *, optional: bool = True):
    """``value`` if it is a ``torch.Generator`` (or None, with ``optional``), else
    ``ValueError("{name}: expected a torch.Generator, got ...")``."""
    if not (isinstance(value, torch.Generator) or (optional and value is None)):
        raise ValueError(f"{name}: expected a torch.Generator{' or None' if optional else ''}, "
                         f"got {type(value).__name__}")
    return value


# --- files ----------------------------------------------------------------------------------------


class MissingFileError(FileNotFoundError, ValueError):
    """A file or folder named by an argument does not exist. It is a ``FileNotFoundError`` (what Python
    raises for a missing file) and a ``ValueError`` (what arlib raises for every bad argument), so either
    ``except`` catches it; the message names the argument: ``"path: no ladder results at ..."``."""
