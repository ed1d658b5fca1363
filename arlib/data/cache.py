"""The data registry and its cache: every external file has a source, a sha256 and a licence.

Files land in ``$ARLIB_DATA`` (default ``data/cache/`` in the repository, ``~/.cache/arlib`` for an
installed package: :func:`cache_dir`) through an atomic write (temporary file + rename), so an
interrupted fetch never leaves a file that looks complete. Downloads use HTTPS only (a redirect to any
other scheme is refused) and write the answer's bytes to a file: nothing downloaded is installed, built,
imported or run. :func:`ensure` checks a fetched file's size and sha256 against the registry before it
returns the path, so no loader opens a file that does not match; a file that does not match (corrupted,
truncated, tampered) is deleted and fetched again. Set ``ARLIB_OFFLINE=1`` to forbid fetching: a
missing file then raises an error that says what to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPI_SIMPLE = "https://pypi.org/simple/"  # the package index's simple API (PEP 503/691)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a file or registry name: no folder, no "..", no "/"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DataUnavailableError(RuntimeError):
    """A data source is missing and cannot be fetched here; the message says what to install or run."""


class _MissingFileError(FileNotFoundError, ValueError):
    """A file argument that does not exist: a FileNotFoundError for callers that catch OSError, and a
    ValueError naming the argument like every other bad argument."""


class _UnknownKeyError(KeyError, ValueError):
    """An unknown registry key: a KeyError for dict-minded callers, a ValueError listing the known keys."""

    def __str__(self) -> str:
        return str(self.args[0])


def _check_str(value, name: str, *, plain: bool = False) -> str:
    """``value`` if it is a non-empty str (a plain file or registry name if ``plain``), else an error."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__} {value!r}")
    if not value or (plain and (not _PLAIN_NAME.fullmatch(value) or ".." in value)):
        kind = "a plain name (letters, digits, '.', '_', '+', '-'; no folder, no '..')" if plain else "a non-empty str"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    return value


def _check_path(value, name: str) -> Path:
    """``Path(value)`` for a str or os.PathLike naming a path, else ``TypeError`` naming the argument."""
    if isinstance(value, str) and value:
        return Path(value)
    if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):
        return Path(value)
    raise TypeError(f"{name}: expected a path (a non-empty str or os.PathLike), got {value!r}")


def check_file(value, name: str) -> Path:
    """``Path(value)`` if it names an existing regular file, else an error naming the argument ``name``:
    ``TypeError`` for a value that is not a path, a ``ValueError`` that is also a ``FileNotFoundError``
    for a path that is missing or not a file."""
    path = _check_path(value, name)
    if not path.is_file():
        raise _MissingFileError(f"{name}: {path} {'is not a file' if path.exists() else 'does not exist'}")
    return path


@dataclass(frozen=True)
class Source:
    """One external file. ``fetchers`` are tried in order; each writes the file to the path it is given.

    ``name`` and ``filename`` are plain names (``filename`` is the file's name in the cache, never a path);
    ``sha256`` is 64 lowercase hex digits and ``size`` the file's length in bytes. A bad field raises
    ``TypeError``/``ValueError`` naming it.
    """

    name: str  # registry key, e.g. "shakespeare"
    filename: str  # name inside the cache
    sha256: str
    size: int  # bytes, for messages and the README table
    origin: str  # where it comes from, in words
    license: str
    fetchers: tuple[Callable[[Path], None], ...] = field(default=(), repr=False)
    system_paths: tuple[str, ...] = ()  # read-only copies a system package may provide
    install_hint: str = ""

    def __post_init__(self):
        _check_str(self.name, "name", plain=True)
        _check_str(self.filename, "filename", plain=True)
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256: expected 64 lowercase hex digits, got {self.sha256!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size: expected a positive int (bytes), got {self.size!r}")
        for name in ("origin", "license", "install_hint"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a str, got {getattr(self, name)!r}")
        for name, check, what in (("fetchers", callable, "callables"),
                                  ("system_paths", lambda p: isinstance(p, str) and p, "non-empty str paths")):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(check(x) for x in value):
                raise TypeError(f"{name}: expected a tuple of {what}, got {value!r}")
            object.__setattr__(self, name, tuple(value))

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL the fetchers download from (each fetcher made here lists its own in ``.urls``)."""
        return tuple(url for fetch in self.fetchers for url in getattr(fetch, "urls", ()))


class Registry(dict):
    """A dict of named entries (``SOURCES``, ``FASHION_MNIST``) whose lookup of an unknown or unhashable
    key raises a ``ValueError`` (also a ``KeyError``) that names the argument ``key_name`` and lists the
    known keys."""

    def __init__(self, what: str, key_name: str, entries=()):
        super().__init__(entries)
        self.what = _check_str(what, "what")
        self.key_name = _check_str(key_name, "key_name")

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except (KeyError, TypeError):  # unknown, or unhashable (a list)
            known = ", ".join(map(str, self))
            raise _UnknownKeyError(f"{self.key_name}: unknown {self.what} {key!r}; known: {known}") from None


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
    (``~/.cache/arlib``) when arlib is installed as a package. Created if missing; ``ValueError`` naming
    ``ARLIB_DATA`` if that path exists and is not a folder."""
    default = REPO_ROOT / "data" / "cache" if in_checkout() else user_dir("cache")
    root = Path(os.environ.get("ARLIB_DATA") or default)
    if root.exists() and not root.is_dir():
        raise ValueError(f"ARLIB_DATA: the data cache {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    return root


_VERIFIED: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256 (hash once)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (a missing ``path`` raises an error naming it)."""
    path = check_file(path, "path")
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
    path = _check_path(path, "path")
    if not callable(write):
        raise TypeError(f"write: expected a callable taking the temporary file's path, got {write!r}")
    if path.is_dir():
        raise ValueError(f"path: {path} is a folder, not a file to write")
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


def _check_source(source) -> Source:
    if not isinstance(source, Source):
        raise TypeError(f"source: expected an arlib.data.Source, got {type(source).__name__}")
    return source


def locate(source: Source) -> Path | None:
    """Path of a verified copy of ``source`` (cache first, then system paths), or None."""
    _check_source(source)  # before cache_dir() creates the folder
    cached = cache_dir() / source.filename
    if _is_valid(cached, source):
        return cached
    for candidate in source.system_paths:
        if _is_valid(Path(candidate), source):
            return Path(candidate)
    return None


def ensure(source: Source) -> Path:
    """Return a verified local path of ``source``, fetching it into the cache if needed.

    A fetched file is checked against ``source.size`` and ``source.sha256`` before this returns, so a
    caller never opens a file that does not match; one that does not match is deleted and the next
    fetcher tried. A cached file with the wrong size or checksum is deleted and fetched again.
    """
    found = locate(_check_source(source))
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
        size, got = cached.stat().st_size, sha256_file(cached)
        cached.unlink()
        errors.append(f"fetched file has {size} bytes and sha256 {got}, expected {source.size} and {source.sha256}; "
                      "deleted unopened")
    raise DataUnavailableError(
        f"data source {source.name!r} could not be fetched ({'; '.join(errors) or 'no fetcher'}). To fix: {how}."
    )


# -- fetchers: HTTPS downloads of plain bytes ------------------------------------------------------------


def check_https(url, name: str = "url") -> str:
    """``url`` if it is an ``https://`` URL with a host, else ``TypeError``/``ValueError`` naming ``name``:
    arlib.data downloads over HTTPS only."""
    if not isinstance(url, str):
        raise TypeError(f"{name}: expected an https:// URL (str), got {type(url).__name__} {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:  # a malformed netloc, such as an unclosed IPv6 bracket
        parts, host = None, None
    if parts is None or parts.scheme != "https" or not host:
        raise ValueError(f"{name}: expected an https:// URL with a host (arlib.data downloads over HTTPS only), "
                         f"got {url!r}")
    return url


class _HTTPSOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another https:// URL (urllib's default also follows one to plain HTTP)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(target).scheme != "https":
            raise urllib.error.URLError(f"refused a redirect from {req.full_url} to {target}: not HTTPS")
        return super().redirect_request(req, fp, code, msg, headers, target)


def _urlopen(url: str, accept: str | None = None):
    """Open an HTTPS URL: the one place arlib.data reaches the network (the tests replace it)."""
    opener = urllib.request.build_opener(_HTTPSOnlyRedirects)  # replaces urllib's default redirect handler
    headers = {"User-Agent": "arlib.data (urllib)"} | ({"Accept": accept} if accept else {})
    return opener.open(urllib.request.Request(check_https(url), headers=headers), timeout=60)


def _read_at_most(response, max_bytes: int, url: str, out=None) -> bytes:
    """The answer's bytes (or, with ``out``, write them there and return b""), refusing more than
    ``max_bytes``: a server cannot fill the disk or the memory."""
    chunks, total = [], 0
    for block in iter(lambda: response.read(1 << 20), b""):
        total += len(block)
        if total > max_bytes:
            raise RuntimeError(f"{url} sent more than {max_bytes:,} bytes; refused")
        out.write(block) if out is not None else chunks.append(block)
    return b"".join(chunks)


def _check_max_bytes(max_bytes) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes: expected a positive int, got {max_bytes!r}")
    return max_bytes


def _download(url: str, dest: Path, max_bytes: int) -> None:
    with _urlopen(url) as response, open(dest, "wb") as out:
        _read_at_most(response, max_bytes, url, out)


def from_url(url: str, max_bytes: int = 1 << 30) -> Callable[[Path], None]:
    """A fetcher that downloads ``url`` over HTTPS (redirects only to HTTPS) into the file it is given.

    The answer is written as bytes, never opened or run; :func:`ensure` then checks its size and sha256.
    More than ``max_bytes`` is refused. The fetcher lists its URL in ``.urls``.
    """
    check_https(url, "url")
    _check_max_bytes(max_bytes)

    def download(dest: Path) -> None:
        _download(url, dest, max_bytes)

    download.__name__ = f"download {url}"
    download.urls = (url,)
    return download


def from_index_sdist(package: str, filename: str, index: str = PYPI_SIMPLE,
                     max_bytes: int = 1 << 30) -> Callable[[Path], None]:
    """A fetcher that downloads the source distribution ``filename`` of ``package`` as a file.

    It reads the package's page of the index's simple API in its JSON form (PEP 691,
    ``{index}{package}/``), takes the URL of the entry named exactly ``filename`` and downloads it over
    HTTPS. No installer is involved: nothing is installed or built, and nothing in the archive runs
    (``pip download`` of an sdist would run its build backend, and so its ``setup.py``, to read its
    metadata). :func:`ensure` checks the file's size and sha256 against the registry before anything
    opens the archive. The fetcher lists the index page in ``.urls``; the file's URL, taken from the
    page, must be HTTPS too.
    """
    package = _check_str(package, "package", plain=True)
    filename = _check_str(filename, "filename", plain=True)
    if not filename.endswith((".tar.gz", ".zip")):
        raise ValueError(f"filename: expected a source distribution (.tar.gz or .zip), got {filename!r}")
    check_https(index, "index")
    _check_max_bytes(max_bytes)
    page = urllib.parse.urljoin(index if index.endswith("/") else index + "/",
                                re.sub(r"[-_.]+", "-", package).lower() + "/")  # PEP 503 normalized name

    def download_sdist(dest: Path) -> None:
        with _urlopen(page, accept="application/vnd.pypi.simple.v1+json") as response:
            raw = _read_at_most(response, 16 << 20, page)
        try:
            files = json.loads(raw)["files"]
            urls = [entry["url"] for entry in files if isinstance(entry, dict) and entry.get("filename") == filename]
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"{page}: not a PEP 691 JSON page ({exc})") from None
        if len(urls) != 1 or not isinstance(urls[0], str):
            raise RuntimeError(f"{page} lists {len(urls)} files named {filename}; expected one")
        url = urllib.parse.urljoin(page, urls[0])
        try:
            check_https(url, "url")
        except ValueError as exc:
            raise RuntimeError(f"{page} points {filename} at a URL that is not HTTPS: {url}") from exc
        _download(url, dest, max_bytes)

    download_sdist.__name__ = f"download {filename} listed by {page}"
    download_sdist.urls = (page,)
    return download_sdist
