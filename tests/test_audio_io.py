"""Audio I/O: format round trips, audioSettings, atomic writes, resampler accuracy, source loading."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import soundfile as sf

from acestep_edge.runtime import audio_io
from acestep_edge.runtime.audio_io import (
    AudioError,
    encode_audio_bytes,
    read_audio,
    resample,
    write_audio,
)
from acestep_edge.runtime.request import AudioSettings

SR = 48_000


def _tones(seconds: float = 1.0, sr: int = SR, freqs=(440.0, 660.0)) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * sr / x.size)


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-20))


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_round_trip(tmp_path, fmt):
    audio = _tones()
    path = write_audio(tmp_path / f"out.{fmt.lower()}", audio, SR, fmt)
    info = sf.info(str(path))
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == SR and info.channels == 2
    assert info.format == {"MP3": "MP3", "OGG": "OGG", "WAV": "WAV", "FLAC": "FLAC"}[fmt]
    # Lossy codecs may pad by up to a frame or two; lossless ones are exact in length.
    slack = 0 if fmt in ("WAV", "FLAC") else 4096
    assert audio.shape[1] <= data.shape[0] <= audio.shape[1] + slack
    for ch, f in enumerate((440.0, 660.0)):
        assert abs(_peak_hz(data[:SR, ch], SR) - f) < 2.0
    if fmt in ("WAV", "FLAC"):
        assert np.abs(data.T - audio).max() < 1e-4  # 16-bit quantisation only
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("fmt", ["MP3", "OGG"])
def test_audio_settings_rate_channels(fmt):
    audio = _tones(2.0)
    settings = AudioSettings(sample_rate=22050, channels=1, bitrate=48)
    blob = encode_audio_bytes(audio, SR, fmt, settings)
    data, sr = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
    assert sr == 22050 and data.shape[1] == 1
    assert 2 * 22050 <= data.shape[0] <= 2 * 22050 + 4096
    # The mono downmix keeps both tones.
    spec = np.abs(np.fft.rfft(data[:22050, 0] * np.hanning(22050)))
    assert spec[440] > 100 * np.median(spec) and spec[660] > 100 * np.median(spec)


def test_mp3_bitrate_is_honoured():
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal((2, 5 * SR))).astype(np.float32)
    for kbps in (64, 128, 256):
        blob = encode_audio_bytes(audio, SR, "MP3", {"bitrate": kbps})
        measured = len(blob) * 8 / 5 / 1000
        assert abs(measured - kbps) / kbps < 0.1, (kbps, measured)


def test_ogg_bitrate_orders_file_sizes():
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal((2, 3 * SR))).astype(np.float32)
    small = encode_audio_bytes(audio, SR, "OGG", {"bitrate": 64})
    large = encode_audio_bytes(audio, SR, "OGG", {"bitrate": 320})
    assert len(large) > 1.5 * len(small)


def test_bad_settings_raise():
    audio = _tones(0.2)
    with pytest.raises(AudioError, match="32–320"):
        encode_audio_bytes(audio, SR, "MP3", {"bitrate": 500})
    with pytest.raises(AudioError, match="lossy|MP3 and OGG"):
        encode_audio_bytes(audio, SR, "WAV", {"bitrate": 128})
    with pytest.raises(AudioError, match="MP3, WAV, FLAC, OGG"):
        encode_audio_bytes(audio, SR, "AAC")
    with pytest.raises(AudioError, match="NaN"):
        encode_audio_bytes(np.full((2, 100), np.nan, np.float32), SR, "WAV")
    with pytest.raises(AudioError, match="channels"):
        encode_audio_bytes(np.zeros((3, 100), np.float32), SR, "WAV")


def test_overshoot_is_clipped_not_wrapped():
    audio = np.full((2, 1000), 1.5, np.float32)
    data, _ = sf.read(io.BytesIO(encode_audio_bytes(audio, SR, "WAV")), dtype="float32")
    assert np.all(data > 0.99)


def test_atomic_write_leaves_nothing_on_write_failure(tmp_path, monkeypatch):
    target = tmp_path / "song.wav"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(audio_io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_audio(target, _tones(0.2), SR, "WAV")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "song.wav"
    target.write_bytes(b"previous")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(audio_io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_audio(target, _tones(0.2), SR, "WAV")
    assert [p.name for p in tmp_path.iterdir()] == ["song.wav"]
    assert target.read_bytes() == b"previous"


def test_atomic_write_missing_dir(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        write_audio(tmp_path / "nope" / "a.wav", _tones(0.2), SR, "WAV")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sr_in,sr_out", [(48000, 44100), (44100, 48000), (48000, 16000),
                                          (48000, 11025), (22050, 48000)])
def test_resampler_preserves_sine(sr_in, sr_out):
    f = 997.0
    x = np.sin(2 * np.pi * f * np.arange(2 * sr_in) / sr_in)
    y = resample(x, sr_in, sr_out)
    assert y.shape == (int(np.ceil(x.size * sr_out / sr_in)),)
    ref = np.sin(2 * np.pi * f * np.arange(y.size) / sr_out)
    core = slice(sr_out // 10, -sr_out // 10)  # away from the zero-padded edges
    assert _snr_db(ref[core], y[core]) > 70
    assert abs(_peak_hz(y, sr_out) - f) < 1.0


def test_resampler_removes_aliases_and_keeps_channels():
    # 15 kHz cannot exist at 16 kHz output: it must be filtered, not folded to 1 kHz.
    x = np.stack([np.sin(2 * np.pi * 15000 * np.arange(SR) / SR),
                  np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)]).astype(np.float32)
    y = resample(x, SR, 16000)
    assert y.shape == (2, 16000) and y.dtype == np.float32
    assert np.abs(y[0, 1000:-1000]).max() < 1e-3
    assert np.abs(y[1, 1000:-1000]).max() > 0.99


def test_read_audio_forms(tmp_path):
    mono = _tones(1.0, sr=44100, freqs=(440.0,))[0]
    path = tmp_path / "src.flac"
    sf.write(str(path), mono * 3.0, 44100, format="FLAC", subtype="PCM_24")  # clips at ±1
    from_path = read_audio(str(path))
    assert from_path.shape == (2, SR) and from_path.dtype == np.float32
    assert np.array_equal(from_path[0], from_path[1])
    assert np.abs(from_path).max() <= 1.0
    assert abs(_peak_hz(from_path[0], SR) - 440) < 2
    assert np.array_equal(read_audio(path.as_uri()), from_path)
    uri = "data:audio/flac;base64," + base64.b64encode(path.read_bytes()).decode()
    assert np.array_equal(read_audio(uri), from_path)


def test_read_audio_errors(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        read_audio(str(tmp_path / "missing.wav"))
    with pytest.raises(AudioError, match="offline"):
        read_audio("https://example.com/a.mp3")
    with pytest.raises(AudioError, match="base64"):
        read_audio("data:audio/wav;base64,!!!")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(AudioError, match="not a readable audio file"):
        read_audio(str(junk))
