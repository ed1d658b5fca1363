"""Shared helpers of the hostile-input suite (tests/test_hostile_*.py).

Every public function and class of arlib must answer a bad argument either with a valid result or with a
``ValueError``/``TypeError`` whose message names the argument; never an ``IndexError``, a
``LinAlgError``, a crash deep inside torch, or a result that breaks the function's contract.

Each ``tests/test_hostile_<part>.py`` declares ``COVERED``, the set of qualified names
(``"arlib.text.sampling.top_p"``) it calls with bad inputs; ``tests/test_hostile_api.py`` lists arlib's public
API with :func:`public_api` and fails when a name is in no module's ``COVERED``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import arlib

CLEAR_ERRORS = (ValueError, TypeError)


def public_api() -> set[str]:
    """Qualified names of every public function and class defined in a public module of arlib."""
    names = set()
    for info in pkgutil.walk_packages(arlib.__path__, "arlib."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", "") == info.name:
                names.add(f"{info.name}.{name}")
    return names


def rejects(fn, *args, arg: str, **kwargs) -> str:
    """Call ``fn(*args, **kwargs)``; require a ValueError/TypeError whose message names ``arg``. Returns the
    message so a test can require more of it."""
    with pytest.raises(CLEAR_ERRORS) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert arg in message, f"{getattr(fn, '__qualname__', fn)}: the error should name {arg!r}: {message!r}"
    return message


def valid_or_rejects(fn, *args, arg: str, contract, **kwargs):
    """Either a result for which ``contract(result)`` holds, or a clear error naming ``arg``; never another
    exception. Returns the result (or None when it raised)."""
    try:
        result = fn(*args, **kwargs)
    except CLEAR_ERRORS as exc:
        assert arg in str(exc), f"{getattr(fn, '__qualname__', fn)}: the error should name {arg!r}: {exc}"
        return None
    assert contract(result), f"{getattr(fn, '__qualname__', fn)} returned {result!r}, which breaks its contract"
    return result


def probe_table_tests(probes: list, covered: set):
    """The tests every table of probes ``(id, callable)`` gets: one parametrized case per probe, unique ids,
    and a probe for every name of ``covered`` (an id starts with the name it probes, ``"top_p-nan"``).
    Bind them at module level: ``test_probe, test_probe_ids_are_unique, test_every_covered_name_is_probed =
    probe_table_tests(PROBES, COVERED)``."""

    @pytest.mark.parametrize("probe", [p for _, p in probes], ids=[name for name, _ in probes])
    def test_probe(probe):
        probe()

    def test_probe_ids_are_unique():
        names = [name for name, _ in probes]
        assert len(names) == len(set(names))

    def test_every_covered_name_is_probed():
        probed = {name.split("-")[0] for name, _ in probes}
        assert {name.rsplit(".", 1)[1] for name in covered} <= probed

    return test_probe, test_probe_ids_are_unique, test_every_covered_name_is_probed
