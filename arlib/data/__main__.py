"""Fetch, verify and list the book's data.

    python -m arlib.data fetch [NAME ...]   fetch and verify all sources (or the named ones)
    python -m arlib.data status             where each source is found and whether its sha256 matches
                                            (and the real recordings of pocketsphinx-testdata)
    python -m arlib.data speech [--n N]     synthesize the default speech sets into the cache (optional)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from arlib.data import (
    SOURCES,
    DataUnavailableError,
    Source,
    cache_dir,
    ensure,
    locate,
    real_speech,
    sha256_file,
    speech,
)


def _mb(size: int) -> str:
    return f"{size / 1e6:8.2f} MB"


def _where(source: Source) -> tuple[str, str]:
    """(sha256 state, where) for the status table."""
    found = locate(source)
    if found is not None:
        return "ok", ("cache" if found.parent == cache_dir() else "system") + f"  {found}"
    cached = cache_dir() / source.filename
    if cached.exists() or any(Path(p).exists() for p in source.system_paths):
        return "BAD", "present but wrong size or sha256 (`fetch` replaces the cached copy)"
    return "-", "missing"


def fetch(names: list[str]) -> int:
    unknown = [name for name in names if name not in SOURCES]
    if unknown:
        print(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names or list(SOURCES):
        source = SOURCES[name]
        had = locate(source) is not None
        try:
            path = ensure(source)
        except DataUnavailableError as exc:
            failed += 1
            print(f"{name:28s} {_mb(source.size)}  FAILED\n    {exc}", file=sys.stderr)
            continue
        print(f"{name:28s} {_mb(path.stat().st_size)}  {'ok' if had else 'fetched':7s}  {path}")
    if failed:
        print(f"{failed} source(s) could not be obtained; see the messages above.", file=sys.stderr)
        if os.environ.get("ARLIB_OFFLINE") == "1":
            print("ARLIB_OFFLINE=1 forbids fetching: unset it to fetch.", file=sys.stderr)
    return 1 if failed else 0


def status() -> int:
    print(f"cache: {cache_dir()}")
    print(f"{'source':28s} {'size':>11s}  sha256  where")
    for name, source in SOURCES.items():
        state, where = _where(source)
        print(f"{name:28s} {_mb(source.size)}  {state:6s}  {where}")
    try:
        version = f"espeak-ng {speech.espeak_version()}"
    except DataUnavailableError:
        version = "espeak-ng not installed (`apt-get install espeak-ng`)"
    sets = sorted(cache_dir().glob("speech-*.npz"))
    print(f"\nspeech: {version}; {len(sets)} cached set(s)")
    for path in sets:
        sidecar = path.with_name(path.name + ".sha256")
        ok = sidecar.exists() and sidecar.read_text().strip() == sha256_file(path)
        print(f"  {path.name:60s} {_mb(path.stat().st_size)}  {'ok' if ok else 'BAD'}")
    try:
        recordings = real_speech.real_recordings()
    except DataUnavailableError as exc:
        print(f"\nreal speech (pocketsphinx-testdata): {exc}")
    else:
        seconds = sum(r.duration for r in recordings)
        print(f"\nreal speech (pocketsphinx-testdata): {len(recordings)} recordings, {seconds:.0f} s, sha256 ok, "
              f"{sum(r.in_vocabulary for r in recordings)} within the vocabulary  {real_speech.POCKETSPHINX_DIR}")
    return 0


def synth(n: int | None, seed: int) -> int:
    for split in ("train", "dev", "test"):
        start = time.perf_counter()
        try:
            utterances = speech.spoken_utterances(split, n=n, seed=seed)
        except DataUnavailableError as exc:
            print(exc, file=sys.stderr)
            return 1
        seconds = sum(u.duration for u in utterances)
        path = speech.cache_path(split, len(utterances), seed)
        print(f"speech {split:5s}: {len(utterances)} utterances, {seconds / 60:.1f} min of audio, "
              f"{time.perf_counter() - start:.1f} s, {_mb(path.stat().st_size)}  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arlib.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="fetch and verify sources (all if none named)")
    get.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(SOURCES)}")
    commands.add_parser("status", help="list sources, their checksums and where they are found")
    say = commands.add_parser("speech", help="synthesize the speech sets into the cache")
    say.add_argument("--n", type=int, default=None, help="utterances per split (default: 1000 train, 200 test)")
    say.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return fetch(args.names)
    if args.command == "status":
        return status()
    return synth(args.n, args.seed)


if __name__ == "__main__":
    sys.exit(main())
