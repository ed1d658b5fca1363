"""Spoken word sequences synthesized with ``espeak-ng``: a small, real, offline speech corpus.

Each utterance says 1-8 words from ``VOCABULARY`` (digits, numbers, short commands) in one voice:
an English accent of espeak-ng combined with a voice variant (``en-gb-scotland+f2``), at a random speed
(words per minute, ``-s``) and pitch (``-p``). Three splits are held out from each other honestly:

- voices: the variants are split into disjoint train, dev and test sets, and no variant of one split is a
  near-duplicate of a variant of another (:func:`near_duplicate_variants`: ``steph2`` is ``steph`` with one
  formant changed, ``linda`` shares most of ``belinda``'s settings); one accent family (Caribbean, ``en-029``) is heard
  only in the test split;
- transcripts: every word sequence belongs to exactly one split (:func:`transcript_split`, a hash of the
  words), so no test sentence is ever heard in training, whatever the sizes drawn.

espeak-ng writes 22,050 Hz 16-bit WAV; we
resample it to 16 kHz (polyphase, 320/441), scale it to a peak of 0.7 and keep it as int16; loaders
return float32 in [-1, 1].

A synthesized set is cached as one ``.npz`` per (split, n, seed, word range, espeak-ng version,
configuration), written atomically with a ``.sha256`` sidecar: a corrupt or partial file is detected
and synthesized again.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from arlib.data.cache import DataUnavailableError, atomic_write, cache_dir, sha256_file
from arlib.validate import describe

SAMPLE_RATE = 16_000
VOCABULARY = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "twenty", "thirty", "fifty", "hundred", "thousand",
    "go", "stop", "left", "right", "up", "down", "yes", "no", "on", "off", "forward", "back",
    "start", "open", "close", "play", "pause", "next", "again", "cancel", "help", "wait",
)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
HELD_OUT_ACCENTS = ("en-029",)  # the Caribbean accent family: test only, never heard in training or dev
SEEN_ACCENTS = tuple(a for a in ACCENTS if a not in HELD_OUT_ACCENTS)
# espeak-ng voice variants (files under espeak-ng-data/voices/!v): 24 for training, 4 for dev, 8 for test;
# novelty variants (robots, whisper, croak) are left out, and so are near-duplicates of a variant in
# another split (steph2/steph3 of steph, linda of belinda, Gene2 of Gene; see near_duplicate_variants).
TRAIN_VARIANTS = (
    "Alicia", "Andrea", "aunty", "belinda", "f1", "f2", "f4", "f5", "steph", "anika",
    "Alex", "Andy", "adam", "benjamin", "caleb", "david", "john", "m1", "m2", "m3", "m5", "m6", "max", "paul",
)
DEV_VARIANTS = ("Gene", "travis", "zac", "boris")
TEST_VARIANTS = ("Annie", "f3", "shelby", "grandma", "m4", "edward", "quincy", "victor")
TRAIN_VOICES = tuple(f"{accent}+{variant}" for accent in SEEN_ACCENTS for variant in TRAIN_VARIANTS)  # 168
DEV_VOICES = tuple(f"{accent}+{variant}" for accent in SEEN_ACCENTS for variant in DEV_VARIANTS)  # 28
TEST_VOICES = tuple(f"{accent}+{variant}" for accent in ACCENTS for variant in TEST_VARIANTS)  # 64 voices
SPLITS = ("train", "dev", "test")
TRANSCRIPT_BUCKETS = {"test": (0,), "dev": (1,)}  # of 10 hash buckets; the other 8 are the training sentences
SPEED_RANGE = (130, 210)  # words per minute, inclusive (espeak-ng's default is 175)
PITCH_RANGE = (25, 75)  # 0..99, inclusive (default 50)
AMPLITUDE = 40  # espeak-ng -a (at the default 100 loud variants such as paul clip; at 40 none does)
PEAK = 0.7  # every utterance is scaled to this peak: the variants' loudness differs by a factor of 5
DEFAULT_N = {"train": 1000, "dev": 200, "test": 200}
_FORMAT = 3  # bump when the synthesis recipe changes, so old caches are not reused


@dataclass(frozen=True, eq=False)
class Utterance:
    """One synthesized utterance."""

    waveform: torch.Tensor  # (T,) float32 in [-1, 1]
    transcript: str  # the words joined by single spaces
    words: tuple[str, ...]
    voice: str  # espeak-ng voice, "accent+variant"
    speed: int  # words per minute
    pitch: int  # 0..99
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        if not isinstance(self.waveform, torch.Tensor) or self.waveform.ndim != 1 \
                or not self.waveform.is_floating_point():
            raise TypeError(f"waveform: expected a 1-D floating torch.Tensor, got {describe(self.waveform)}")
        for name in ("transcript", "voice"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a str, got {getattr(self, name)!r}")
        if not isinstance(self.words, tuple) or not all(isinstance(w, str) for w in self.words):
            raise TypeError(f"words: expected a tuple of str, got {self.words!r}")
        _check_int("speed", self.speed, 1)
        _check_int("pitch", self.pitch, 0, 99)
        _check_int("sample_rate", self.sample_rate, 1)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.waveform.numel() / self.sample_rate

    def __repr__(self) -> str:
        return f"Utterance({self.transcript!r}, voice={self.voice!r}, {self.duration:.2f} s)"


# -- espeak-ng ----------------------------------------------------------------------------------


def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataUnavailableError("espeak-ng is not installed; the speech data is synthesized with it: "
                                   "run `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng`.")
    return path


@functools.lru_cache(maxsize=4)
def _version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"text-to-speech:\s*([\w.\-]+)", out)
    return match.group(1) if match else "unknown"


def espeak_version() -> str:
    """The installed espeak-ng version, e.g. ``"1.51"`` (raises DataUnavailableError if not installed)."""
    return _version(_espeak())


@functools.lru_cache(maxsize=4)
def _check_variants(exe: str) -> None:
    out = subprocess.run([exe, "--voices=variant"], capture_output=True, text=True).stdout
    installed = {line.split()[-1].removeprefix("!v/") for line in out.splitlines()[1:] if line.strip()}
    missing = sorted(set(TRAIN_VARIANTS + TEST_VARIANTS) - installed)
    if missing:
        warnings.warn(f"espeak-ng lacks voice variants {missing}; it speaks them with the plain accent", stacklevel=3)


def _parse_wav(raw: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono PCM samples and rate from a RIFF/WAVE byte string (espeak-ng's ``--stdout`` leaves
    the data size unset, so the data chunk runs to the end)."""
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise RuntimeError(f"espeak-ng did not write a WAV file (got {raw[:12]!r})")
    pos, rate = 12, None
    while pos + 8 <= len(raw):
        chunk, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if chunk == b"fmt ":  # format tag, channels, sample rate, byte rate, block align, bits per sample
            fmt, channels, rate, _, _, bits = np.frombuffer(raw, "<u2,<u2,<u4,<u4,<u2,<u2", 1, pos + 8)[0].tolist()
            if (fmt, channels, bits) != (1, 1, 16):
                raise RuntimeError(f"espeak-ng wrote WAV format {fmt} with {channels} channels of {bits} bits; "
                                   "expected 16-bit mono PCM")
        elif chunk == b"data":
            data = raw[pos + 8:pos + 8 + size]
            return np.frombuffer(data[: len(data) // 2 * 2], "<i2"), rate
        pos += 8 + size + (size & 1)
    raise RuntimeError("espeak-ng's WAV output has no data chunk")


def synthesize(text: str, voice: str, speed: int = 175, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` with espeak-ng; return int16 samples at 16 kHz, shape (T,).

    ``speed`` is in words per minute, 80 to 450 (espeak-ng's range: it reads a slower speed as 80 and says
    nothing at all far above 450); ``pitch`` is 0 to 99. ``text`` is passed after ``--``, so a text that
    starts with ``-`` is spoken, never read as an option. An unknown ``voice`` raises ``ValueError``.
    """
    if not isinstance(text, str) or not text.strip() or "\0" in text:
        raise ValueError(f"text: expected a non-empty string without NUL characters, got {text!r}")
    if not isinstance(voice, str) or not re.fullmatch(r"[A-Za-z0-9][\w+-]*", voice):
        raise ValueError(f"voice: expected an espeak-ng voice name such as 'en-us+f2', got {voice!r}")
    _check_int("speed", speed, 80, 450)
    _check_int("pitch", pitch, 0, 99)
    cmd = [_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(AMPLITUDE), "--stdout", "--", text]
    done = subprocess.run(cmd, capture_output=True)
    error = done.stderr.decode(errors="replace")
    if "voice does not exist" in error:
        raise ValueError(f"voice: espeak-ng has no voice {voice!r} (`espeak-ng --voices` lists them)")
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed ({' '.join(cmd)}): {error[-300:]}")
    pcm, rate = _parse_wav(done.stdout)  # (T0,) int16 at `rate` (22,050 Hz)
    if pcm.size == 0:
        raise ValueError(f"text: espeak-ng said nothing for {text!r}")
    g = math.gcd(SAMPLE_RATE, rate)
    x = resample_poly(pcm.astype(np.float64), SAMPLE_RATE // g, rate // g)  # (T,) float64
    peak = np.abs(x).max()
    if peak > 0:
        x *= PEAK * 32767 / peak
    return np.rint(x).astype(np.int16)


# -- the data set -------------------------------------------------------------------------------


def transcript_split(words) -> str:
    """The split a word sequence belongs to: ``"train"``, ``"dev"`` or ``"test"``, from a hash of its words
    (``TRANSCRIPT_BUCKETS``), so a sentence of one split is never drawn in another."""
    if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words \
            or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"words: expected a non-empty tuple of words, got {words!r:.80}")
    bucket = int(hashlib.sha256(" ".join(words).encode()).hexdigest(), 16) % 10
    return next((split for split, buckets in TRANSCRIPT_BUCKETS.items() if bucket in buckets), "train")


def _voices(split: str) -> tuple[str, ...]:
    return {"train": TRAIN_VOICES, "dev": DEV_VOICES, "test": TEST_VOICES}[split]


def _plan(split: str, n: int, seed: int, min_words: int, max_words: int) -> list[dict]:
    """Draw what each utterance says and who says it. Utterance i depends only on (seed, split, i); a
    word sequence of another split (:func:`transcript_split`) is drawn again."""
    voices = _voices(split)
    plan = []
    for i in range(n):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        while True:
            k = int(rng.integers(min_words, max_words + 1))
            words = tuple(VOCABULARY[j] for j in rng.integers(0, len(VOCABULARY), size=k))
            if transcript_split(words) == split:
                break
        plan.append(dict(words=words, voice=voices[int(rng.integers(len(voices)))],
                         speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
                         pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))))
    return plan


@functools.lru_cache(maxsize=4)
def _data_dir(exe: str) -> Path:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    return Path(match.group(1) if match else "/usr/share/espeak-ng-data")


def variant_settings(variant: str) -> dict[str, tuple[str, ...]]:
    """An espeak-ng voice variant's settings, read from its file: ``{"formant 1": ("95", "95", "95"),
    "pitch": ("82", "117"), ...}`` (the name and comments left out)."""
    if not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9][\w-]*", variant):
        raise ValueError(f"variant: expected an espeak-ng voice variant name such as 'f2', got {variant!r}")
    path = _data_dir(_espeak()) / "voices" / "!v" / variant
    if not path.is_file():
        raise ValueError(f"variant: espeak-ng has no voice variant file {str(path)!r}")
    settings = {}
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split("//")[0].split("#")[0].split()
        if not fields or fields[0] in ("name", "language"):
            continue
        width = 2 if fields[0] in ("formant", "tone") else 1  # "formant 3 ..." is keyed by its number too
        settings[" ".join(fields[:width])] = tuple(fields[width:])
    return settings


def near_duplicate_variants(a: str, b: str, threshold: float = 0.4) -> bool:
    """Whether two voice variants are near-duplicates: at least ``threshold`` of the settings either names
    are equal in both (``steph2`` shares 44 % with ``steph``, ``linda`` 64 % with ``belinda``; across the
    splits' variants the most shared is 29 %, ``f3`` with ``f2``)."""
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected a fraction in (0, 1], got {threshold!r}")
    sa, sb = variant_settings(a), variant_settings(b)
    keys = set(sa) | set(sb)
    return bool(keys) and sum(sa.get(k) == sb.get(k) for k in keys) / len(keys) >= threshold


def _synthesize_all(plan: list[dict], workers: int) -> list[np.ndarray]:
    """Run espeak-ng over the plan, ``workers`` processes at a time (each call is a short subprocess)."""
    from tqdm import tqdm

    _check_variants(_espeak())
    jobs = [(" ".join(p["words"]), p["voice"], p["speed"], p["pitch"]) for p in plan]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda job: synthesize(*job), jobs)
        return list(tqdm(results, total=len(jobs), desc="espeak-ng", disable=len(jobs) < 500, leave=False))


def _config_tag() -> str:
    config = [_FORMAT, VOCABULARY, TRAIN_VOICES, DEV_VOICES, TEST_VOICES, TRANSCRIPT_BUCKETS, SPEED_RANGE,
              PITCH_RANGE, AMPLITUDE, PEAK, SAMPLE_RATE]
    return hashlib.sha256(json.dumps(config).encode()).hexdigest()[:8]


def cache_path(split: str, n: int, seed: int, min_words: int = 1, max_words: int = 8,
               version: str | None = None) -> Path:
    """Where the set for these arguments is cached (``version`` defaults to the installed espeak-ng)."""
    _check_args(split, n, seed, min_words, max_words)
    version = espeak_version() if version is None else version
    if not isinstance(version, str) or not re.fullmatch(r"[\w.*-]+", version):
        raise ValueError(f"version: expected an espeak-ng version such as '1.51', got {version!r}")
    name = f"speech-{split}-n{n}-seed{seed}-w{min_words}-{max_words}-espeak{version}-{_config_tag()}.npz"
    return cache_dir() / name


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, list[dict]] | None:
    """The cached (audio, offsets, plan), or None if the file or its sha256 sidecar is missing or wrong."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        if sidecar.read_text().strip() != sha256_file(path):
            raise ValueError("checksum mismatch")
        with np.load(path, allow_pickle=False) as z:
            return z["audio"], z["offsets"], json.loads(str(z["plan"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # missing, partial or corrupt: synthesize again
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return None


def _write(path: Path, audio: np.ndarray, offsets: np.ndarray, plan: list[dict]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, audio=audio, offsets=offsets, plan=np.array(json.dumps(plan)))

    atomic_write(path, write)
    digest = sha256_file(path)
    atomic_write(path.with_name(path.name + ".sha256"), lambda tmp: tmp.write_text(digest + "\n"))


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        raise ValueError(f"{name}: expected an integer " + (f">= {low}" if high is None else f"in [{low}, {high}]")
                         + f", got {value!r}")


def _check_args(split, n, seed, min_words, max_words) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected 'train', 'dev' or 'test', got {split!r}")
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    _check_int("min_words", min_words, 1)
    _check_int("max_words", max_words, min_words)


def spoken_utterances(split: str = "train", n: int | None = None, seed: int = 0, min_words: int = 1,
                      max_words: int = 8, workers: int | None = None) -> list[Utterance]:
    """``n`` synthesized utterances of word sequences, spoken by the ``split``'s voices.

    Args:

    - split: ``"train"`` (voices ``TRAIN_VOICES``), ``"dev"`` (``DEV_VOICES``: for every choice made
      while building a recognizer) or ``"test"`` (``TEST_VOICES``: scored once, at the end). The voices,
      the accent ``HELD_OUT_ACCENTS`` and the word sequences of each split are never heard in another.
    - n: number of utterances (default ``DEFAULT_N``: 1000 for train, 200 for dev and test).
    - seed: the set is a deterministic function of (split, n, seed, word range, espeak-ng version);
      utterance i is the same for every n > i.
    - min_words, max_words: the number of words is uniform in this inclusive range (1..8).
    - workers: espeak-ng processes run at once (default: the number of CPUs).

    Synthesis takes about 10 ms an utterance per core; the set is cached under ``cache_dir()``.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected 'train', 'dev' or 'test', got {split!r}")
    n = DEFAULT_N[split] if n is None else n
    _check_args(split, n, seed, min_words, max_words)
    workers = (os.cpu_count() or 1) if workers is None else workers
    _check_int("workers", workers, 1)
    n, seed, min_words, max_words = int(n), int(seed), int(min_words), int(max_words)

    found = None
    if shutil.which("espeak-ng") is None:  # no synthesizer: a set cached earlier by any version will do
        for path in sorted(cache_dir().glob(cache_path(split, n, seed, min_words, max_words, "*").name)):
            found = _read(path)
            if found is not None:
                break
        if found is None:
            _espeak()  # raises DataUnavailableError with the install hint
    else:
        path = cache_path(split, n, seed, min_words, max_words)
        found = _read(path) if path.exists() else None
        if found is None:
            plan = _plan(split, n, seed, min_words, max_words)
            clips = _synthesize_all(plan, workers)
            offsets = np.cumsum([0] + [len(c) for c in clips])  # (n + 1,)
            found = (np.concatenate(clips), offsets, plan)
            _write(path, *found)
    audio, offsets, plan = found
    return [
        Utterance(waveform=torch.from_numpy(audio[offsets[i]:offsets[i + 1]].astype(np.float32) / 32768.0),
                  transcript=" ".join(p["words"]), words=tuple(p["words"]), voice=p["voice"], speed=p["speed"],
                  pitch=p["pitch"])
        for i, p in enumerate(plan)
    ]
