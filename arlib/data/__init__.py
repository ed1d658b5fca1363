"""Real data, offline-first and checksummed (DESIGN.md section 5).

Loaders: :func:`shakespeare`, :func:`fashion_mnist`, :func:`spoken_utterances`. Each reads a verified
file from the cache (``$ARLIB_DATA``, default ``data/cache``) or a system package, and fetches it once
if missing (``python -m arlib.data fetch`` does all of them; ``ARLIB_OFFLINE=1`` forbids fetching).
"""

from arlib.data.cache import DataUnavailableError, Source, atomic_write, cache_dir, ensure, locate, sha256_file
from arlib.data.text import SHAKESPEARE, TextCorpus, shakespeare

SOURCES: dict[str, Source] = {SHAKESPEARE.name: SHAKESPEARE}

__all__ = [
    "SOURCES", "Source", "DataUnavailableError", "TextCorpus",
    "atomic_write", "cache_dir", "ensure", "locate", "sha256_file", "shakespeare",
]
