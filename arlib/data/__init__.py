"""Real data, offline-first and checksummed (see data/README.md).

Loaders: :func:`shakespeare`, :func:`fashion_mnist`, :func:`spoken_utterances`, :func:`real_recordings`.
Each reads a verified file from the cache (``$ARLIB_DATA``, default ``data/cache``) or a system package, and
fetches it once if missing (``python -m arlib.data fetch`` does all of them; ``ARLIB_OFFLINE=1`` forbids
fetching). Speech is synthesized locally with espeak-ng and cached the same way; a few real recordings, for a
reality check, come from Debian's ``pocketsphinx-testdata`` (:mod:`arlib.data.real_speech`, never fetched).
Downloads are HTTPS only and nothing downloaded runs: a fetched file's size and sha256 are checked before any
loader opens it (:mod:`arlib.data.cache`).
"""

from arlib.data.cache import (
    DataUnavailableError,
    Registry,
    Source,
    atomic_write,
    cache_dir,
    ensure,
    locate,
    sha256_file,
)
from arlib.data.images import CLASS_NAMES, FASHION_MNIST, fashion_mnist, read_idx
from arlib.data.real_speech import Recording, real_recordings
from arlib.data.speech import (
    DEV_VOICES,
    SAMPLE_RATE,
    TEST_VOICES,
    TRAIN_VOICES,
    VOCABULARY,
    Utterance,
    espeak_version,
    spoken_utterances,
    synthesize,
)
from arlib.data.text import SHAKESPEARE, TextCorpus, shakespeare

SOURCES: dict[str, Source] = Registry("data source", "name",
                                      {s.name: s for s in (SHAKESPEARE, *FASHION_MNIST.values())})

__all__ = [
    "SOURCES", "Registry", "Source", "DataUnavailableError", "TextCorpus", "Utterance", "Recording",
    "CLASS_NAMES", "FASHION_MNIST", "DEV_VOICES", "SAMPLE_RATE", "TEST_VOICES", "TRAIN_VOICES", "VOCABULARY",
    "atomic_write", "cache_dir", "ensure", "espeak_version", "fashion_mnist", "locate", "read_idx",
    "real_recordings", "sha256_file", "shakespeare", "spoken_utterances", "synthesize",
]
