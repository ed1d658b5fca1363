"""Every public function and class of arlib is probed with hostile inputs by some tests/test_hostile_*.py.

Each such module declares ``COVERED``, the qualified names it calls with bad arguments; this test gathers them
(importing the modules by path) and compares them with :func:`hostile.public_api`: a public name that no
module covers fails, and so does a covered name that is not public (a typo, or a name since removed).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hostile import public_api

HERE = Path(__file__).resolve().parent


def covered_names() -> dict[str, set[str]]:
    """``COVERED`` of every tests/test_hostile_*.py (except this one), by file name."""
    found = {}
    for path in sorted(HERE.glob("test_hostile_*.py")):
        if path.name == Path(__file__).name:
            continue
        name = f"_hostile_cover_{path.stem}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        found[path.name] = set(getattr(module, "COVERED", set()))
    return found


def test_every_public_name_is_probed():
    covered = set().union(*covered_names().values())
    missing = sorted(public_api() - covered)
    assert not missing, f"{len(missing)} public names are in no tests/test_hostile_*.py COVERED: {missing}"


def test_every_covered_name_is_public():
    public = public_api()
    unknown = {f: sorted(names - public) for f, names in covered_names().items() if names - public}
    assert not unknown, f"COVERED names that are not public functions or classes of arlib: {unknown}"
