"""The environment is described three times (pyproject, requirements.lock, environment.yml): they agree."""

import os
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


INSTALLED_CHECK = """
import os, sys, json
from pathlib import Path
import arlib
from arlib.checkpoints import checkpoint_dir
from arlib.data.cache import cache_dir, in_checkout

here = Path(arlib.__file__).resolve()
assert str(here).startswith(os.environ["SITE"]), here  # the installed copy, not the checkout
assert not in_checkout()
loaded = arlib.load("shakespeare-draft")  # from $ARLIB_HOME/checkpoints, sha256 verified
assert checkpoint_dir() == Path(os.environ["ARLIB_HOME"]) / "checkpoints"
from arlib.data import shakespeare
text = shakespeare()  # from $ARLIB_DATA
os.environ.pop("ARLIB_DATA")
default_cache = cache_dir()
os.environ.pop("ARLIB_HOME")
print(json.dumps({"params": loaded.model.num_params(), "chars": len(text.train),
                  "default_cache": str(default_cache), "default_checkpoints": str(checkpoint_dir())}))
"""


def test_a_built_wheel_works_outside_the_checkout(tmp_path):
    """pip builds a wheel of arlib; installed into a folder of its own and run from another directory,
    it loads a checkpoint through ARLIB_HOME and data through ARLIB_DATA, and defaults to per-user folders."""
    import json
    import shutil
    import subprocess
    import sys

    wheels, site, home, user = tmp_path / "wheels", tmp_path / "site", tmp_path / "home", tmp_path / "user"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(ROOT), "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("arlib-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    (home / "checkpoints").mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(ROOT / "data" / "checkpoints" / f"shakespeare-draft{suffix}", home / "checkpoints")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ARLIB_HOME", "ARLIB_DATA")}
    env.update(PYTHONPATH=str(site), SITE=str(site.resolve()), ARLIB_HOME=str(home),
               ARLIB_DATA=str(ROOT / "data" / "cache"), XDG_CACHE_HOME=str(user / "cache"),
               XDG_DATA_HOME=str(user / "share"))
    run = subprocess.run([sys.executable, "-c", INSTALLED_CHECK], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["params"] > 0 and out["chars"] > 1_000_000
    assert out["default_cache"] == str(user / "cache" / "arlib")
    assert out["default_checkpoints"] == str(user / "share" / "arlib" / "checkpoints")
    assert wheel.stat().st_size < 2 * 2**20  # code only: checkpoints travel through ARLIB_HOME, not the wheel
