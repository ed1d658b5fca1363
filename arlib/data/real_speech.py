"""Real recorded speech for a reality check: the test recordings of CMU Sphinx's pocketsphinx.

The book's recognizers learn from speech that espeak-ng synthesizes (:mod:`arlib.data.speech`). To see how
far that carries, they are also scored on a few real people: the recordings that pocketsphinx ships to test
itself, installed by Debian's package ``pocketsphinx-testdata`` under ``/usr/share/pocketsphinx/test/data``
(:data:`POCKETSPHINX_DIR`). Every recording there whose transcript is known is listed here, 12 of the 14:

- ``tidigits/dhd.2934z.raw``: a TIDIGITS digit string, "two nine three four zero" (its file name spells the
  digits, ``z`` for zero; the package's ``tidigits/tidigits.lsn`` gives the same words for the same string
  ``2934za`` of another speaker, and pocketsphinx's own Python test of this file expected them);
- ``goforward.raw``: "go forward ten meters" (the package's ``goforward.gram`` is this sentence's
  grammar, and pocketsphinx's tests assert that the decoder hears it);
- ``cards/001.wav`` .. ``005.wav``: playing cards, "five five" or "ten of clubs" (``cards/cards.transcription``;
  the decoder's output ``cards/cards.hyp`` agrees word for word);
- ``librivox/*.wav``: five sentences of Jane Austen's *Sense and Sensibility* read for LibriVox
  (``librivox/transcription``).

``numbers.raw`` and ``something.raw`` are left out: nothing in the package or in pocketsphinx's tests says
what they say. The TIDIGITS ``*.mfc`` files are cepstra, not audio. Only ``dhd.2934z.raw`` and
``cards/004.wav`` use the book's vocabulary alone; every other recording carries the words outside it in
:attr:`Recording.oov`, so a chapter can score the in-vocabulary ones and report the rest apart.

Every file is 16 kHz, 16-bit, mono (``.raw`` headerless little-endian, ``.wav`` PCM). :func:`real_recordings`
reads each file's bytes once, checks their size and sha256 against the table below before parsing them, and
refuses a missing or modified file with a :class:`~arlib.data.cache.DataUnavailableError` that says what to
install. Nothing from the package is executed. Licence: BSD-2-Clause, Carnegie Mellon University (1995-2014)
and Alpha Cephei Inc. (2014-2015), per the package's ``/usr/share/doc/pocketsphinx-testdata/copyright``; the
LibriVox readings themselves are in the public domain.
"""

from __future__ import annotations

import hashlib
import io
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arlib.data.cache import DataUnavailableError
from arlib.data.speech import SAMPLE_RATE, VOCABULARY
from arlib.validate import describe

__all__ = ["POCKETSPHINX_DIR", "INSTALL_HINT", "Recording", "real_recordings"]

#: Where Debian's ``pocketsphinx-testdata`` installs the recordings (read at each call of
#: :func:`real_recordings`).
POCKETSPHINX_DIR = "/usr/share/pocketsphinx/test/data"
#: The command that installs them, quoted by every error.
INSTALL_HINT = "apt-get install pocketsphinx-testdata"

_LIBRIVOX = "librivox/sense_and_sensibility_01_austen_64kb-"
_LIBRIVOX_EVIDENCE = "librivox/transcription (a LibriVox reading of Sense and Sensibility, chapter 1)"
_CARDS_EVIDENCE = "cards/cards.transcription; the decoder's output cards/cards.hyp agrees"
# (path under POCKETSPHINX_DIR, size in bytes, sha256, transcript, how the transcript is known)
_FILES = (
    ("tidigits/dhd.2934z.raw", 76800, "60c14412ad1412b83f37061e29c9e76f74cce0f90637debb8087f10cd559e552",
     "two nine three four zero",
     "TIDIGITS file name (the digits 2934z, z for zero; tidigits/tidigits.lsn transcribes the string 2934za of "
     "speaker ah the same); pocketsphinx's Python test of this file expected these words"),
    ("goforward.raw", 89160, "f15c60ec54059d8b66e410d0064945a0b0a04ea56e1ddca1958e493c0cf70e71",
     "go forward ten meters",
     "goforward.gram (public <move> = go forward ten meters); pocketsphinx's tests of goforward.raw assert "
     "that the decoder hears these words"),
    ("cards/001.wav", 35096, "899951e768666f27c8f8b1d4090b96fe7909cae9cec01bec0a5d5d1b8a8d566e",
     "ten of clubs", _CARDS_EVIDENCE),
    ("cards/002.wav", 62772, "a3f9eae6fdb69a1231989e39a14d62388a6f52fb59666c76d95005318fadafec",
     "four queen of clubs", _CARDS_EVIDENCE),
    ("cards/003.wav", 49266, "00d283e46bc257ae479e4aa86593cadb541656eba1d19fc8abeece37f6a5a18b",
     "seven of clubs", _CARDS_EVIDENCE),
    ("cards/004.wav", 49772, "4c44a8177f5b128b99f078cdeb918119933155574231f1833e8840d1af09c521",
     "five five", _CARDS_EVIDENCE),
    ("cards/005.wav", 112124, "090f18f5f76cf8b2b43cd9e6b07823f4685a4742d9a36cd98b174a6586c18cf9",
     "eight of spades four of clubs seven of hearts", _CARDS_EVIDENCE),
    (f"{_LIBRIVOX}0870.wav", 227244, "b0557cf95c974d930577e58e46b7f068c432a6e3afcc286563d88922b2a5315c",
     "and mister john dashwood had then leisure to consider how much there might be prudently in his power to "
     "do for them", _LIBRIVOX_EVIDENCE),
    (f"{_LIBRIVOX}0880.wav", 95724, "fbec491ef00ee734a67f0ee318e98c51c157b479e1629ff4f4426861ecac0414",
     "he was not an ill disposed young man", _LIBRIVOX_EVIDENCE),
    (f"{_LIBRIVOX}0890.wav", 169644, "5793ffbdee55fb8bfd284943a6866864c832d9d4accf2661cabd39915c84ee10",
     "unless to be rather cold hearted and rather selfish is to be ill disposed", _LIBRIVOX_EVIDENCE),
    (f"{_LIBRIVOX}0920.wav", 193644, "40882414ef4cc51f3ff7a63bad0c8c87e7f595ffeb8209fbf756c8ebc5c28a59",
     "had he married a more a amiable woman he might have been made still more respectable than he was",
     _LIBRIVOX_EVIDENCE),
    (f"{_LIBRIVOX}0930.wav", 105324, "954adbf0b56ac8a148cbe77b39ca18d76b5f2a1e1f405565bd786ce3e68a68b7",
     "he might even have been made amiable himself", _LIBRIVOX_EVIDENCE),
)


def _oov(words) -> tuple[str, ...]:
    """The words outside ``VOCABULARY``, each once, in the order they are first said."""
    return tuple(dict.fromkeys(w for w in words if w not in VOCABULARY))


@dataclass(frozen=True, eq=False)
class Recording:
    """One real recording and what it says.

    ``source`` is the file's path under :data:`~arlib.data.real_speech.POCKETSPHINX_DIR`
    (``"cards/004.wav"``); ``oov`` lists the transcript's words outside the book's ``VOCABULARY``, each once,
    in order (empty when a recognizer of that vocabulary could get every word right); ``evidence`` says how
    the transcript is known. A field of the wrong type raises ``TypeError`` naming it.
    """

    #: The samples, (T,) float32 in [-1, 1), at ``sample_rate``.
    waveform: torch.Tensor
    #: What is said: lower-case words joined by single spaces.
    transcript: str
    #: The file's path under :data:`~arlib.data.real_speech.POCKETSPHINX_DIR`.
    source: str
    #: The transcript's words outside ``VOCABULARY``, each once, in the order first said.
    oov: tuple[str, ...] = ()
    #: How the transcript is known (which file of the package, or which test, says it).
    evidence: str = ""
    #: Samples per second (16 kHz for every recording here).
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        if not isinstance(self.waveform, torch.Tensor) or self.waveform.ndim != 1 \
                or not self.waveform.is_floating_point():
            raise TypeError(f"waveform: expected a 1-D floating torch.Tensor, got {describe(self.waveform)}")
        for name in ("transcript", "source", "evidence"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a str, got {getattr(self, name)!r}")
        if not isinstance(self.oov, tuple) or not all(isinstance(w, str) for w in self.oov):
            raise TypeError(f"oov: expected a tuple of str, got {self.oov!r}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate < 1:
            raise TypeError(f"sample_rate: expected a positive int (Hz), got {self.sample_rate!r}")

    @property
    def words(self) -> tuple[str, ...]:
        """The transcript's words."""
        return tuple(self.transcript.split())

    @property
    def in_vocabulary(self) -> bool:
        """Whether every word is in the book's vocabulary (``oov`` is empty)."""
        return not self.oov

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.waveform.numel() / self.sample_rate

    def __repr__(self) -> str:
        return f"Recording({self.transcript!r}, source={self.source!r}, oov={self.oov!r}, {self.duration:.2f} s)"


def _samples(data: bytes, source: str) -> np.ndarray:
    """The int16 samples of a verified file: headerless little-endian ``.raw`` or PCM ``.wav``."""
    if source.endswith(".raw"):
        return np.frombuffer(data, dtype="<i2")
    with wave.open(io.BytesIO(data)) as w:
        layout = (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype())
        if layout != (1, 2, SAMPLE_RATE, "NONE"):  # cannot happen for a file whose sha256 matched
            raise DataUnavailableError(f"{source}: expected 16-bit mono PCM at {SAMPLE_RATE} Hz, got "
                                       f"(channels, bytes, rate, compression) = {layout}")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def real_recordings() -> list[Recording]:
    """The 12 real recordings of ``pocketsphinx-testdata`` whose transcripts are known, in a fixed order.

    Each file under :data:`~arlib.data.real_speech.POCKETSPHINX_DIR` (read when called) is read once; its
    size and sha256 are checked before it is parsed, and the samples are scaled from int16 to float32 in
    [-1, 1). Filter with :attr:`~arlib.data.real_speech.Recording.in_vocabulary` for the ones the book's
    recognizers can get entirely right. A missing package or file, or one whose checksum differs (a corrupt
    copy, another version), raises :class:`~arlib.data.cache.DataUnavailableError` saying what to install.
    """
    root = Path(POCKETSPHINX_DIR)
    if not root.is_dir():
        raise DataUnavailableError(f"the real speech recordings are not installed (no folder {root}): "
                                   f"run `{INSTALL_HINT}` (Debian/Ubuntu; CMU Sphinx's test recordings, BSD licence)")
    recordings = []
    for source, size, sha256, transcript, evidence in _FILES:
        path = root / source
        if not path.is_file():
            raise DataUnavailableError(f"{path} is missing: the package pocketsphinx-testdata is incomplete or of "
                                       f"another version; run `{INSTALL_HINT}` (or `apt-get install --reinstall "
                                       "pocketsphinx-testdata`)")
        data = path.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if len(data) != size or got != sha256:
            raise DataUnavailableError(f"{path} has {len(data)} bytes and sha256 {got}, expected {size} and {sha256}: "
                                       "a corrupt or modified copy, refused unparsed; reinstall it with "
                                       "`apt-get install --reinstall pocketsphinx-testdata`")
        samples = _samples(data, source)
        waveform = torch.from_numpy(samples.astype(np.float32) / 32768.0)  # (T,)
        recordings.append(Recording(waveform=waveform, transcript=transcript, source=source,
                                    oov=_oov(transcript.split()), evidence=evidence))
    return recordings
