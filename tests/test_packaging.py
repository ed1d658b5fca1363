"""The environment is described three times (pyproject, requirements.lock, environment.yml): they agree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert "==" in line, f"requirements.lock: {line!r} is not an exact pin"
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def conda_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"\s+- ([A-Za-z0-9_.\-]+)==(\S+)$", line)
        if m:
            pins[_name(m[1])] = m[2]
    return pins


def pyproject_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return reqs


def test_lock_pins_torch_cpu_wheel_and_jupyter_book_1():
    pins = lock_pins()
    assert pins["torch"] == "2.13.0"
    assert pins["jupyter-book"].startswith("1.")


def test_every_direct_dependency_is_pinned_in_the_lock_and_in_environment_yml():
    pins, conda = lock_pins(), conda_pins()
    for req in pyproject_requirements():
        name = _name(req)
        assert name in pins, f"{name} (pyproject) is not pinned in requirements.lock"
        assert name in conda, f"{name} (pyproject) is missing from environment.yml"


def test_environment_yml_pins_equal_the_lock():
    pins, conda = lock_pins(), conda_pins()
    assert conda, "environment.yml lists no pinned packages"
    for name, version in conda.items():
        assert pins.get(name) == version, f"environment.yml pins {name}=={version}, the lock {pins.get(name)}"


def test_pyproject_uses_lower_bounds_only():
    for req in pyproject_requirements():
        assert "==" not in req, f"pyproject.toml should give lower bounds, not exact pins: {req}"


def test_makefile_has_the_documented_targets_and_ci_runs_make_test():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("setup", "book", "test", "lab", "execute", "student", "clean"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile lacks target {target}"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme and "make lab" in readme
