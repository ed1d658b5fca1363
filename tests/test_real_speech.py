"""arlib.data.real_speech: the real recordings of Debian's pocketsphinx-testdata, checksummed, with transcripts.

The tests that read the recordings are skipped only where the package is not installed (CI installs it:
``apt-get install pocketsphinx-testdata``); those of the missing-package error and of the dataclass run
everywhere."""

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from arlib.data import VOCABULARY, DataUnavailableError, Recording, real_recordings, real_speech
from arlib.data import __main__ as cli

INSTALLED = Path(real_speech.POCKETSPHINX_DIR).is_dir()
needs_package = pytest.mark.skipif(not INSTALLED, reason="pocketsphinx-testdata is not installed "
                                                         "(apt-get install pocketsphinx-testdata)")
IN_VOCABULARY = {"tidigits/dhd.2934z.raw": "two nine three four zero", "cards/004.wav": "five five"}
UNTRANSCRIBED = {"numbers.raw", "something.raw"}  # nothing in the package or its tests says what they say


@pytest.fixture(scope="module")
def recordings():
    return real_recordings() if INSTALLED else None


@needs_package
def test_twelve_recordings_at_16khz_in_range_and_in_a_fixed_order(recordings):
    assert len(recordings) == 12 and len({r.source for r in recordings}) == 12
    assert [r.source for r in recordings] == [f[0] for f in real_speech._FILES]
    for r in recordings:
        assert isinstance(r, Recording) and r.sample_rate == 16000
        assert r.waveform.dtype == torch.float32 and r.waveform.ndim == 1
        assert -1.0 <= float(r.waveform.min()) and float(r.waveform.max()) < 1.0
        assert 1.0 < r.duration < 8.0 and float(r.waveform.square().mean().sqrt()) > 0.01  # speech, not silence
        assert r.transcript == " ".join(r.words) and r.transcript == r.transcript.lower() and r.evidence
    total = sum(r.duration for r in recordings)
    assert abs(total - 39.57) < 0.01  # seconds


@needs_package
def test_oov_words_are_exactly_those_outside_the_vocabulary(recordings):
    for r in recordings:
        expected = [w for w in dict.fromkeys(r.words) if w not in VOCABULARY]
        assert list(r.oov) == expected and r.in_vocabulary == (not expected)
    assert {r.source: r.transcript for r in recordings if r.in_vocabulary} == IN_VOCABULARY
    by_source = {r.source: r for r in recordings}
    assert by_source["goforward.raw"].oov == ("meters",)
    assert by_source["cards/001.wav"].oov == ("of", "clubs")


@needs_package
def test_sizes_and_checksums_match_the_installed_files(recordings):
    root = Path(real_speech.POCKETSPHINX_DIR)
    for source, size, sha256, _, _ in real_speech._FILES:
        data = (root / source).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256
    # the samples are the file's int16 samples / 32768: little-endian, after a 44-byte header in the .wav files
    by_source = {r.source: r for r in recordings}
    raw = np.fromfile(root / "goforward.raw", dtype="<i2")
    assert torch.equal(by_source["goforward.raw"].waveform, torch.from_numpy(raw / np.float32(32768)))
    wav = np.frombuffer((root / "cards/004.wav").read_bytes()[44:], dtype="<i2")
    assert torch.equal(by_source["cards/004.wav"].waveform, torch.from_numpy(wav / np.float32(32768)))


@needs_package
def test_samples_are_read_with_the_right_byte_order(recordings):
    """Byte-swapped 16-bit speech is near-white noise; speech is not: its spectrum is far from flat."""
    for r in recordings:
        power = torch.fft.rfft(r.waveform.double()).abs().square() + 1e-12
        flatness = float(power.log().mean().exp() / power.mean())  # geometric / arithmetic mean, 1 for white
        assert flatness < 0.2, r.source  # 0.01 to 0.13 here
        swapped = torch.from_numpy((r.waveform.numpy() * 32768).astype("<i2").byteswap() / 32768.0)
        swapped_power = torch.fft.rfft(swapped.double()).abs().square() + 1e-12
        assert float(swapped_power.log().mean().exp() / swapped_power.mean()) > 0.4  # 0.44 to 0.56 here


@needs_package
def test_transcripts_agree_with_the_package_own_files(recordings):
    root = Path(real_speech.POCKETSPHINX_DIR)
    listed = {}
    for name, folder in (("cards/cards.transcription", "cards"), ("librivox/transcription", "librivox")):
        for line in (root / name).read_text().splitlines():
            words, utt = re.fullmatch(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line.strip()).groups()
            listed[f"{folder}/{utt}.wav"] = " ".join(words.split())
    hyps = dict(reversed(re.fullmatch(r"(.*) \((\S+) -?\d+\)", line).groups())
                for line in (root / "cards/cards.hyp").read_text().splitlines())
    assert all(listed[f"cards/{utt}.wav"] == hyp for utt, hyp in hyps.items())  # the decoder agrees
    lsn = dict(reversed(re.fullmatch(r"(.*) \((\S+)\)", line).groups())
               for line in (root / "tidigits/tidigits.lsn").read_text().splitlines())
    listed["tidigits/dhd.2934z.raw"] = lsn["man.ah.2934za"]  # the same digit string, another speaker
    assert "public <move> = go forward ten meters;" in (root / "goforward.gram").read_text()
    listed["goforward.raw"] = "go forward ten meters"
    assert {r.source: r.transcript for r in recordings} == listed


@needs_package
def test_every_recording_of_the_package_is_listed_or_has_no_known_transcript():
    root = Path(real_speech.POCKETSPHINX_DIR)
    audio = {str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".raw", ".wav")}
    assert audio == {f[0] for f in real_speech._FILES} | UNTRANSCRIBED


def _copy(tmp_path: Path, monkeypatch) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(real_speech.POCKETSPHINX_DIR, copy)
    monkeypatch.setattr(real_speech, "POCKETSPHINX_DIR", str(copy))
    return copy


@needs_package
def test_a_verified_copy_elsewhere_loads_the_same(tmp_path, monkeypatch, recordings):
    _copy(tmp_path, monkeypatch)
    again = real_recordings()
    assert all(torch.equal(a.waveform, b.waveform) and a.transcript == b.transcript
               for a, b in zip(again, recordings, strict=True))


@needs_package
@pytest.mark.parametrize("damage", ["one byte", "truncated", "appended", "replaced by another recording"])
def test_a_corrupted_copy_is_refused_with_a_clear_error(tmp_path, monkeypatch, damage):
    copy = _copy(tmp_path, monkeypatch)
    target = copy / "cards/004.wav"
    data = bytearray(target.read_bytes())
    if damage == "one byte":
        data[1000] ^= 1
    elif damage == "truncated":
        data = data[:-2]
    elif damage == "appended":
        data += b"\0\0"
    else:
        data = bytearray((copy / "cards/003.wav").read_bytes())
    target.write_bytes(bytes(data))
    with pytest.raises(DataUnavailableError) as err:
        real_recordings()
    message = str(err.value)
    assert str(target) in message and "sha256" in message and "corrupt" in message
    assert "apt-get install --reinstall pocketsphinx-testdata" in message


@needs_package
def test_a_missing_file_says_what_to_install(tmp_path, monkeypatch):
    copy = _copy(tmp_path, monkeypatch)
    (copy / "librivox/sense_and_sensibility_01_austen_64kb-0930.wav").unlink()
    with pytest.raises(DataUnavailableError, match=r"0930\.wav is missing.*apt-get install pocketsphinx-testdata"):
        real_recordings()


def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(real_speech, "POCKETSPHINX_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataUnavailableError, match="apt-get install pocketsphinx-testdata"):
        real_recordings()


def test_status_lists_the_real_recordings_or_says_how_to_get_them(capsys, tmp_path, monkeypatch):
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "real speech (pocketsphinx-testdata): " + ("12 recordings" if INSTALLED else "") in out
    monkeypatch.setattr(real_speech, "POCKETSPHINX_DIR", str(tmp_path / "absent"))
    assert cli.main(["status"]) == 0
    assert "apt-get install pocketsphinx-testdata" in capsys.readouterr().out


def test_recording_fields_and_properties():
    r = Recording(waveform=torch.zeros(8000), transcript="go forward ten meters", source="goforward.raw",
                  oov=("meters",), evidence="test")
    assert r.words == ("go", "forward", "ten", "meters") and not r.in_vocabulary and r.duration == 0.5
    assert "goforward.raw" in repr(r) and "0.50 s" in repr(r)
    assert Recording(torch.zeros(4), "five five", "cards/004.wav").in_vocabulary
    with pytest.raises(TypeError, match="waveform"):
        Recording(torch.zeros(2, 4), "five", "x.raw")
    with pytest.raises(TypeError, match="oov"):
        Recording(torch.zeros(4), "five", "x.raw", oov=["of"])
