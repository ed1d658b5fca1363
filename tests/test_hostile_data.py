"""Hostile inputs for arlib.data: every public function and class is called with bad arguments (wrong types,
empty values, missing or malformed files, bad checksums, unknown names, paths that leave the cache). Each
must answer with a ValueError/TypeError naming the argument, or with a valid result; never a KeyError, an
IndexError, an OSError from deep inside, or a file written where it should not be."""

from __future__ import annotations

import dataclasses
import gzip
import math
from pathlib import Path

import pytest
import torch
from hostile import public_api, rejects, valid_or_rejects

from arlib.data import (
    FASHION_MNIST,
    SHAKESPEARE,
    SOURCES,
    DataUnavailableError,
    cache,
    images,
    real_speech,
    speech,
    text,
)

COVERED = {
    "arlib.data.cache.DataUnavailableError", "arlib.data.cache.Registry", "arlib.data.cache.Source",
    "arlib.data.cache.atomic_write", "arlib.data.cache.cache_dir", "arlib.data.cache.check_file",
    "arlib.data.cache.check_https", "arlib.data.cache.ensure", "arlib.data.cache.from_index_sdist",
    "arlib.data.cache.from_url", "arlib.data.cache.in_checkout", "arlib.data.cache.locate",
    "arlib.data.cache.sha256_file", "arlib.data.cache.user_dir",
    "arlib.data.images.fashion_mnist", "arlib.data.images.read_idx",
    "arlib.data.real_speech.Recording", "arlib.data.real_speech.real_recordings",
    "arlib.data.speech.Utterance", "arlib.data.speech.cache_path", "arlib.data.speech.espeak_version",
    "arlib.data.speech.spoken_utterances", "arlib.data.speech.synthesize",
    "arlib.data.speech.transcript_split", "arlib.data.speech.variant_settings",
    "arlib.data.speech.near_duplicate_variants",
    "arlib.data.text.TextCorpus", "arlib.data.text.shakespeare",
}


def test_covered_lists_every_public_name_of_arlib_data():
    assert {name for name in public_api() if name.startswith("arlib.data.")} == COVERED


# -- the table of probes: (function, positional args, keyword args, the argument the error must name) ---------


class File:
    """A path under the test's tmp_path, made when the probe runs: ``content`` None for a missing file,
    "dir" for a folder, else the bytes to write."""

    def __init__(self, name: str, content: bytes | str | None = None):
        self.name, self.content = name, content

    def make(self, root: Path) -> Path:
        path = root / self.name
        if self.content == "dir":
            path.mkdir()
        elif self.content is not None:
            path.write_bytes(self.content)
        return path

    def __repr__(self) -> str:
        return f"File({self.name})"


def idx(ndim: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = bytes([0, 0, 8, ndim]) + b"".join(d.to_bytes(4, "big", signed=True) for d in dims)
    return gzip.compress(header + payload)


GOOD_SOURCE = dict(name="fake", filename="fake.bin", sha256="0" * 64, size=1, origin="test", license="test")
GOOD_UTTERANCE = dict(waveform=torch.zeros(8), transcript="go", words=("go",), voice="en-us", speed=175, pitch=50)
GOOD_RECORDING = dict(waveform=torch.zeros(8), transcript="five five", source="cards/004.wav")
GOOD_CORPUS = dict(works=("hamlet",), train="a", val="b")
MISSING, FOLDER = File("missing.gz"), File("folder", "dir")
IDX_BAD = [  # (file, what is wrong with it)
    (File("text.gz", b"not gzip at all"), "not gzip"),
    (File("truncated.gz", idx(1, (6,), bytes(6))[:-12]), "gzip stream cut short"),
    (File("empty.gz", gzip.compress(b"")), "empty"),
    (File("header.gz", gzip.compress(bytes([0, 0, 8, 1]))), "ends inside the header"),
    (File("negative.gz", idx(1, (-6,), bytes(6))), "negative dimension"),
    (File("short.gz", idx(1, (6,), bytes(4))), "fewer bytes than the header says"),
    (File("images.gz", idx(3, (1, 2, 2), bytes(4))), "images read as labels"),
]


def case(fn, *args, arg: str, **kwargs):
    label = ",".join([repr(a)[:24] for a in args] + [f"{k}={v!r}"[:30] for k, v in kwargs.items()])
    return pytest.param(fn, args, kwargs, arg, id=f"{fn.__qualname__}({label})")


def source(**bad):
    return lambda: cache.Source(**(GOOD_SOURCE | bad))


def utterance(**bad):
    return lambda: speech.Utterance(**(GOOD_UTTERANCE | bad))


def recording(**bad):
    return lambda: real_speech.Recording(**(GOOD_RECORDING | bad))


def corpus(**bad):
    return lambda: text.TextCorpus(**(GOOD_CORPUS | bad))


REJECTED = [
    # Source: every field checked; filename can never leave the cache folder
    *[case(source(**{field: value}), arg=field) for field, value in [
        ("name", 3), ("name", ""), ("name", "../up"), ("name", None), ("filename", "a/b.bin"),
        ("filename", ".."), ("filename", "/etc/passwd"), ("filename", "x..y"), ("filename", b"fake.bin"),
        ("sha256", "xyz"), ("sha256", None), ("sha256", "A" * 64), ("sha256", "0" * 63),
        ("size", 0), ("size", -1), ("size", True), ("size", 1.5), ("size", "10"),
        ("origin", None), ("license", 3), ("install_hint", None),
        ("fetchers", "abc"), ("fetchers", (None,)), ("fetchers", print),
        ("system_paths", "/usr/share"), ("system_paths", (3,)), ("system_paths", ("",)),
    ]],
    # Registry: unknown and unhashable keys name the argument and list the known keys
    case(cache.Registry, 3, "name", arg="what"),
    case(cache.Registry, "data source", None, arg="key_name"),
    case(SOURCES.__getitem__, "nope", arg="known: shakespeare"),
    case(SOURCES.__getitem__, ["shakespeare"], arg="name"),
    case(SOURCES.__getitem__, None, arg="name"),
    case(FASHION_MNIST.__getitem__, ("val", "images"), arg="(split, kind)"),
    case(FASHION_MNIST.__getitem__, "train", arg="(split, kind)"),
    case(FASHION_MNIST.__getitem__, ("train", "images", "x"), arg="('train', 'images')"),
    # the cache's functions
    *[case(cache.atomic_write, bad, lambda tmp: None, arg="path") for bad in (None, 3, "", b"x", FOLDER)],
    *[case(cache.atomic_write, File("out.bin"), bad, arg="write") for bad in (None, "write", 3)],
    *[case(cache.check_file, bad, "weights", arg="weights") for bad in (None, 3, "", b"x", MISSING, FOLDER)],
    *[case(cache.check_https, bad, arg="url") for bad in (
        None, 3, "", "http://example.org/x", "file:///etc/passwd", "ftp://example.org/x", "https://",
        "https:///path", "javascript:alert(1)", "https://[::1", "HTTPS", "example.org/x")],
    *[case(fn, bad, arg="source") for fn in (cache.ensure, cache.locate)
      for bad in (None, "shakespeare", 3, SOURCES, dataclasses.asdict(SHAKESPEARE))],
    *[case(cache.sha256_file, bad, arg="path") for bad in (None, 3, "", b"x", MISSING, FOLDER)],
    *[case(cache.user_dir, bad, arg="kind") for bad in ("tmp", None, 3, ["cache"], "")],
    *[case(cache.from_url, bad, arg="url") for bad in (None, "", "http://example.org/x.gz", "file:///etc/passwd")],
    *[case(cache.from_url, "https://example.org/x", bad, arg="max_bytes") for bad in (0, -1, True, 1.5, "1", None)],
    *[case(cache.from_index_sdist, bad, "x-1.tar.gz", arg="package") for bad in (None, "", "../x", "a/b", 3)],
    *[case(cache.from_index_sdist, "x", bad, arg="filename") for bad in (
        None, "", "x-1-py3-none-any.whl", "../x-1.tar.gz", "/tmp/x-1.tar.gz", "x-1.egg")],
    *[case(cache.from_index_sdist, "x", "x-1.tar.gz", index=bad, arg="index") for bad in (
        None, "http://pypi.org/simple/", "file:///opt/pypi/simple", "")],
    case(cache.from_index_sdist, "x", "x-1.tar.gz", max_bytes=0, arg="max_bytes"),
    # Fashion-MNIST
    *[case(images.fashion_mnist, bad, arg="split") for bad in ("val", None, 0, ["train"], "", "TRAIN")],
    *[case(images.read_idx, bad, 1, arg="path") for bad in (None, 3, "", MISSING, FOLDER)],
    *[case(images.read_idx, bad, 1, arg="path") for bad, _ in IDX_BAD],
    *[case(images.read_idx, File("labels.gz", idx(1, (2,), bytes(2))), bad, arg="ndim")
      for bad in (0, 4, -1, "1", True, None, 1.5)],
    # speech
    *[case(utterance(**{field: value}), arg=field) for field, value in [
        ("waveform", None), ("waveform", [0.0, 0.1]), ("waveform", torch.zeros(2, 8)),
        ("waveform", torch.zeros(8, dtype=torch.int16)), ("waveform", torch.tensor(0.5)),
        ("transcript", None), ("words", ["go"]), ("words", ("go", 3)), ("voice", None),
        ("speed", 0), ("speed", "175"), ("pitch", 100), ("pitch", -1), ("pitch", None),
        ("sample_rate", 0), ("sample_rate", 16000.0),
    ]],
    *[case(speech.cache_path, *args, version="1.51", arg=arg) for args, arg in [
        (("valid", 5, 0), "split"), ((None, 5, 0), "split"), (("train", 0, 0), "n"), (("train", "5", 0), "n"),
        (("train", 5, -1), "seed"), (("train", 5, 0.5), "seed"), (("train", 5, 0, 0), "min_words"),
        (("train", 5, 0, 4, 3), "max_words"),
    ]],
    *[case(speech.cache_path, "train", 5, 0, version=bad, arg="version") for bad in ("../../x", "a/b", "", 3)],
    *[case(speech.spoken_utterances, **{name: value}, arg=name) for name, value in [
        ("split", "valid"), ("split", None), ("split", ["train"]), ("n", 0), ("n", -1), ("n", "5"), ("n", 2.5),
        ("n", True), ("seed", -1), ("seed", "0"), ("seed", None), ("min_words", 0), ("max_words", 0),
        ("workers", 0), ("workers", 1.5),
    ]],
    *[case(speech.transcript_split, bad, arg="words") for bad in ("go left", (), ("go", ""), None, [3])],
    *[case(speech.variant_settings, bad, arg="variant") for bad in ("../f2", "", None, "no-such-variant")],
    *[case(speech.near_duplicate_variants, "f2", "f3", threshold=bad, arg="threshold") for bad in (0, 1.5, "0.4")],
    *[case(speech.synthesize, bad, "en-us", arg="text") for bad in ("", "   ", None, 3, "go\0left", ["go"])],
    *[case(speech.synthesize, "go", bad, arg="voice") for bad in (
        "", "--help", "-w/tmp/x", "en-us;rm", "x/../y", None, 3, "zz-no-such-voice")],
    *[case(speech.synthesize, "go", "en-us", speed=bad, arg="speed") for bad in (0, 79, 451, 10**6, "175", 1.5, True)],
    *[case(speech.synthesize, "go", "en-us", pitch=bad, arg="pitch") for bad in (-1, 100, None, 50.0)],
    # real recordings
    *[case(recording(**{field: value}), arg=field) for field, value in [
        ("waveform", None), ("waveform", [0.0, 0.1]), ("waveform", torch.zeros(2, 8)),
        ("waveform", torch.zeros(8, dtype=torch.int16)), ("waveform", torch.tensor(0.5)),
        ("transcript", None), ("transcript", ["five"]), ("source", None), ("source", Path("x.wav")),
        ("oov", ["of"]), ("oov", ("of", 3)), ("oov", None), ("oov", "of"), ("evidence", None),
        ("sample_rate", 0), ("sample_rate", 16000.0), ("sample_rate", True), ("sample_rate", None),
    ]],
    # Shakespeare
    *[case(corpus(**{field: value}), arg=field) for field, value in [
        ("works", None), ("works", ["hamlet"]), ("works", ("hamlet", 3)), ("train", None), ("val", 3),
    ]],
    *[case(text.shakespeare, bad, arg="val_fraction") for bad in (
        0, 1, -0.1, 1.5, math.nan, math.inf, "0.1", None, True, [0.1])],
]


def resolve(value, root: Path):
    return value.make(root) if isinstance(value, File) else value


@pytest.mark.parametrize("fn,args,kwargs,arg", REJECTED)
def test_bad_argument_is_refused_with_a_clear_error(fn, args, kwargs, arg, tmp_cache, tmp_path):
    args = [resolve(a, tmp_path) for a in args]
    kwargs = {k: resolve(v, tmp_path) for k, v in kwargs.items()}
    before = sorted(p.name for p in tmp_path.iterdir())
    rejects(fn, *args, arg=arg, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written or left behind


def test_unknown_registry_keys_are_also_key_errors():
    """Old callers catching KeyError keep working; new ones get a ValueError with the known names."""
    for registry, key in [(SOURCES, "nope"), (FASHION_MNIST, ("val", "images"))]:
        with pytest.raises(KeyError) as info:
            registry[key]
        assert isinstance(info.value, ValueError) and str(info.value).startswith(registry.key_name)
        assert registry.get(key) is None and key not in registry


def test_missing_files_are_also_file_not_found_errors(tmp_path):
    for fn in (cache.sha256_file, lambda p: images.read_idx(p, 1)):
        with pytest.raises(FileNotFoundError, match="path: .* does not exist"):
            fn(tmp_path / "missing.gz")


# -- bad values that have a valid answer ----------------------------------------------------------------------


def test_hostile_text_that_espeak_ng_can_speak(tmp_path, monkeypatch):
    """A text that looks like an option is spoken (it follows "--"), never parsed: no file is written."""
    monkeypatch.chdir(tmp_path)
    for words in (f"-w{tmp_path}/x.wav", "--help", "-v zz", "...", "ünïcödé", "go " * 200):
        valid_or_rejects(speech.synthesize, words, "en-gb+f2", arg="text",
                         contract=lambda x: x.dtype == "int16" and x.ndim == 1 and x.size > 0)
    assert list(tmp_path.iterdir()) == []
    for speed, pitch in [(80, 0), (450, 99)]:  # the ends of the ranges
        assert speech.synthesize("go", "en-us", speed, pitch).size > 0


def test_no_argument_functions_give_valid_results_or_name_the_environment(tmp_cache, tmp_path, monkeypatch):
    assert isinstance(cache.in_checkout(), bool)
    assert valid_or_rejects(speech.espeak_version, arg="espeak", contract=lambda v: isinstance(v, str) and v)
    assert cache.cache_dir() == tmp_cache and tmp_cache.is_dir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ARLIB_DATA", str(blocker))
    rejects(cache.cache_dir, arg="ARLIB_DATA")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no espeak-ng: the documented error says what to install
    with pytest.raises(DataUnavailableError, match="apt-get install espeak-ng"):
        speech._version.cache_clear() or speech.espeak_version()


def test_data_unavailable_error_takes_any_message():
    for message in (None, "", 3, "a\nb"):
        error = valid_or_rejects(DataUnavailableError, message, arg="message",
                                 contract=lambda e: isinstance(e, RuntimeError))
        assert str(error) == str(message)


@pytest.mark.parametrize("payload,why", [
    (b"", "0 bytes"), (b"x" * 15, "15 bytes"), (b"x" * 16, "sha256"),
])
def test_a_fetched_file_with_a_bad_checksum_is_refused_and_deleted(tmp_cache, payload, why):
    """ensure's documented refusal: DataUnavailableError with what came and what was expected; no file kept."""
    bad = cache.Source(**(GOOD_SOURCE | dict(size=16, fetchers=(lambda dest: dest.write_bytes(payload),))))
    with pytest.raises(DataUnavailableError, match=why):
        cache.ensure(bad)
    assert cache.locate(bad) is None and list(tmp_cache.iterdir()) == []


def test_a_bad_checksum_under_a_valid_name_is_never_located(tmp_cache):
    """A cached file with the right name and size but the wrong content is not a copy of the source."""
    tmp_cache.mkdir()
    (tmp_cache / SHAKESPEARE.filename).write_bytes(b"\0" * SHAKESPEARE.size)
    assert cache.locate(SHAKESPEARE) is None


def test_hostile_workers_and_seeds_that_are_numpy_integers_are_valid(tmp_cache):
    import numpy as np

    utterances = valid_or_rejects(speech.spoken_utterances, "test", n=np.int64(2), seed=np.int32(1), workers=1,
                                  arg="n", contract=lambda us: len(us) == 2)
    assert all(isinstance(u, speech.Utterance) for u in utterances)


def test_real_recordings_are_valid_or_name_the_package_to_install(tmp_path, monkeypatch):
    """No arguments: either verified recordings or the documented DataUnavailableError with the install line,
    for a missing package, a file replaced by a folder, or an empty file; nothing else."""
    try:
        recordings = real_speech.real_recordings()
    except DataUnavailableError as exc:
        assert "apt-get install pocketsphinx-testdata" in str(exc)
    else:
        assert recordings and all(isinstance(r, real_speech.Recording) and r.waveform.dtype == torch.float32
                                  for r in recordings)
    first = "tidigits/dhd.2934z.raw"  # the first file read
    for make in (lambda root: None, lambda root: (root / first).mkdir(parents=True),
                 lambda root: ((root / first).parent.mkdir(parents=True), (root / first).write_bytes(b""))):
        root = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        make(root)
        monkeypatch.setattr(real_speech, "POCKETSPHINX_DIR", str(root))
        with pytest.raises(DataUnavailableError, match="pocketsphinx-testdata"):
            real_speech.real_recordings()
