"""The environment is described three times (pyproject, requirements.lock, environment.yml): they agree."""

import os
import re
import tomllib
from pathlib import Path

import pytest

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


def test_pyproject_lists_every_arlib_package_and_maps_the_committed_data_into_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "arlib").rglob("__init__.py")}
    assert set(setuptools["packages"]) == folders | {"arlib._checkpoints", "arlib._results"}
    assert setuptools["package-dir"] == {"arlib._checkpoints": "data/checkpoints", "arlib._results": "data/results"}


INSTALLED_CHECK = """
import json, os, shutil
from pathlib import Path
import arlib
from arlib.checkpoints import CheckpointError, checkpoint_dir, checkpoint_paths, list_checkpoints
from arlib.data.cache import cache_dir, in_checkout
from arlib.text.ladder import load_ladder

site = Path(os.environ["SITE"])
assert Path(arlib.__file__).resolve().is_relative_to(site), arlib.__file__  # the installed copy, not the checkout
assert not in_checkout()
loaded = arlib.load("shakespeare-draft")  # the wheel's copy, sha256 checked against its sidecar
shipped = checkpoint_paths("shakespeare-draft")[0]
assert shipped.is_relative_to(site / "arlib" / "_checkpoints"), shipped
ladder = load_ladder()  # chapter 1's committed results, also in the wheel
from arlib.data import shakespeare
text = shakespeare()  # from $ARLIB_DATA
assert cache_dir() == Path(os.environ["ARLIB_DATA"])

home = Path(os.environ["HOME_COPY"])  # $ARLIB_HOME is looked up first: an altered copy there must be refused
os.environ["ARLIB_HOME"] = str(home)
(home / "checkpoints").mkdir(parents=True)
for path in checkpoint_paths("shakespeare-draft"):  # still the shipped pair: $ARLIB_HOME holds nothing yet
    shutil.copy(path, home / "checkpoints")
weights = home / "checkpoints" / "shakespeare-draft.safetensors"
weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
try:
    arlib.load("shakespeare-draft")
    refused = ""
except CheckpointError as err:
    refused = str(err)
os.environ.pop("ARLIB_HOME")
os.environ.pop("ARLIB_DATA")
print(json.dumps({"params": loaded.model.num_params(), "rungs": sorted(ladder["rungs"]), "chars": len(text.train),
                  "names": list_checkpoints(), "refused": refused, "default_cache": str(cache_dir()),
                  "default_checkpoints": str(checkpoint_dir())}))
"""


@pytest.mark.slow  # 11 s alone, over 20 s on a busy machine: pip builds and installs a 24 MB wheel
def test_a_built_wheel_works_outside_the_checkout(tmp_path):
    """pip builds a wheel of arlib carrying the committed checkpoints; installed into a folder of its own and
    run from another directory, it loads them (sha256 checked), reads data through ARLIB_DATA, looks in
    ARLIB_HOME first, and defaults to per-user folders."""
    import json
    import shutil
    import subprocess
    import sys
    import zipfile

    from arlib.checkpoints import CHECKPOINT_DIR
    from arlib.text.ladder import RUNGS

    # Build from a copy: setuptools' build/ folder in the checkout could hold modules deleted since.
    src, wheels, site, user = tmp_path / "src", tmp_path / "wheels", tmp_path / "site", tmp_path / "user"
    shutil.copytree(ROOT / "arlib", src / "arlib", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("checkpoints", "results"):
        shutil.copytree(ROOT / "data" / folder, src / "data" / folder)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(src), "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("arlib-*.whl"))
    committed = sorted(p.name for p in CHECKPOINT_DIR.iterdir() if p.suffix in (".json", ".safetensors"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(n.removeprefix("arlib/_checkpoints/") for n in archive.namelist()
                         if n.startswith("arlib/_checkpoints/"))
    assert shipped == committed
    assert wheel.stat().st_size < 40 * 2**20  # the checkpoints are the bulk; the issue allows 40 MB
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ARLIB_HOME", "ARLIB_DATA")}
    env.update(PYTHONPATH=str(site), SITE=str(site.resolve()), HOME_COPY=str(tmp_path / "home"),
               ARLIB_DATA=str(ROOT / "data" / "cache"), XDG_CACHE_HOME=str(user / "cache"),
               XDG_DATA_HOME=str(user / "share"))
    run = subprocess.run([sys.executable, "-c", INSTALLED_CHECK], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["params"] > 0 and out["chars"] > 1_000_000
    assert set(RUNGS) <= set(out["rungs"])
    assert out["names"] == sorted({name.rsplit(".", 1)[0] for name in committed})
    assert "sha256" in out["refused"] and str(tmp_path / "home") in out["refused"]
    assert out["default_cache"] == str(user / "cache" / "arlib")
    assert out["default_checkpoints"] == str(user / "share" / "arlib" / "checkpoints")
