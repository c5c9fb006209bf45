"""Editing-task request rules and bad source audio through the CLI: Runware error shape, exit code, no file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import acestep_edge
from acestep_edge.runtime.audio_io import read_audio

DEMO_BUNDLE = str(acestep_edge.DEMO_BUNDLE)
UUID = "0b7e3c1e-5d7a-4f0e-8a51-3c2f4b6d9e10"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    t = np.arange(6 * 44100) / 44100
    sf.write(str(d / "clip.wav"), 0.3 * np.sin(2 * np.pi * 440 * t), 44100)
    sf.write(str(d / "silent.wav"), np.zeros((3 * 48000, 2)), 48000)
    sf.write(str(d / "surround.wav"), np.zeros((48000, 6)) + 0.1, 48000)
    (d / "empty.wav").write_bytes(b"")
    (d / "junk.mp3").write_bytes(np.random.default_rng(0).bytes(512))
    return d


def run_cli(request, cwd):
    return subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", "-", "--bundle", DEMO_BUNDLE,
                           "--out", str(cwd / "never.wav")], input=json.dumps(request), capture_output=True,
                          text=True, cwd=cwd)


def request(**changes):
    data = {"taskType": "audioInference", "taskUUID": UUID, "positivePrompt": "test", "steps": 2, "seed": 1,
            "outputFormat": "WAV", "inputs": {"audio": "SRC/clip.wav"}}
    data.update(changes)
    return data


BAD = [
    ("missing source", {"inputs": {"audio": "SRC/nope.wav"}}, "inputs.audio", "does not exist"),
    ("empty source", {"inputs": {"audio": "SRC/empty.wav"}}, "inputs.audio", "not a readable audio file"),
    ("unreadable source", {"inputs": {"audio": "SRC/junk.mp3"}}, "inputs.audio", "not a readable audio file"),
    ("six channels", {"inputs": {"audio": "SRC/surround.wav"}}, "inputs.audio", "6 channels"),
    ("missing reference (text2music)", {"inputs": None, "duration": 10,
                                        "settings": {"referenceAudio": "SRC/nope.wav"}},
     "settings.referenceAudio", "does not exist"),
    ("silent reference", {"settings": {"referenceAudio": "SRC/silent.wav"}}, "settings.referenceAudio", "silent"),
    ("duration with source", {"duration": 30}, "duration", "inputs.audio"),
    ("cover scale without source", {"inputs": None, "duration": 10, "settings": {"coverConditioningScale": 0.5}},
     "settings.coverConditioningScale", "source audio"),
    ("strength without source", {"inputs": None, "duration": 10, "strength": 0.5}, "strength", "source audio"),
    ("repaint window without source", {"inputs": None, "duration": 10, "settings": {"repaintingStart": 1}},
     "settings.repaintingStart", "source audio"),
    ("empty window", {"settings": {"repaintingStart": 3, "repaintingEnd": 2}}, "settings.repaintingEnd", "after"),
    ("window after the source", {"settings": {"repaintingStart": 9, "repaintingEnd": 12}},
     "settings.repaintingStart", "after the end"),
    ("unknown track", {"settings": {"task": "extract", "trackName": "kazoo"}}, "settings.trackName", "vocals"),
    ("strength with a conservative window", {"strength": 0.5, "settings": {"repaintingStart": 1,
                                                                            "repaintMode": "conservative"}},
     "strength", "ignores"),
    ("strength on a windowless aggressive repaint", {"strength": 0.5, "settings": {"task": "repaint",
                                                                                   "repaintMode": "aggressive"}},
     "strength", "balanced"),
    ("repaintMode on extract", {"settings": {"task": "extract", "repaintMode": "aggressive"}},
     "settings.repaintMode", "repaint and lego"),
    ("bad repaintMode", {"settings": {"repaintingStart": 1, "repaintMode": "wild"}}, "settings.repaintMode",
     "balanced"),
    ("cover scale on extract", {"settings": {"task": "extract", "coverConditioningScale": 0.5}},
     "settings.coverConditioningScale", "cover and repaint only"),
    ("cover without source", {"inputs": None, "duration": 10, "settings": {"task": "cover"}}, "settings.task",
     "inputs.audio"),
    ("remote source", {"inputs": {"audio": "https://example.com/a.mp3"}}, "inputs.audio", "offline"),
]


@pytest.mark.parametrize("name,changes,parameter,words", BAD, ids=[b[0] for b in BAD])
def test_bad_task_request_is_a_clean_error(tmp_path, sources, name, changes, parameter, words):
    data = request()
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    text = json.dumps(data).replace("SRC/", str(sources) + "/")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli(json.loads(text), out)
    assert proc.returncode != 0, proc.stdout
    error = json.loads(proc.stdout)["errors"][0]
    assert error["parameter"] == parameter, error
    assert words in error["message"], error
    assert error["taskUUID"] == UUID and error["taskType"] == "audioInference"
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(out.iterdir())


def test_cover_renders_through_the_cli(tmp_path, sources):
    out = tmp_path / "cover.wav"
    data = json.loads(json.dumps(request()).replace("SRC/", str(sources) + "/"))
    proc = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", "-", "--bundle", DEMO_BUNDLE,
                           "--out", str(out)], input=json.dumps(data), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sf.info(str(out)).frames == 6 * 48000  # the source's length at 48 kHz


@pytest.mark.parametrize("rate", [44100, 22050])
def test_mono_sources_load_as_48k_stereo(tmp_path, rate):
    path = tmp_path / f"mono{rate}.wav"
    t = np.arange(int(2.5 * rate)) / rate
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * 440 * t), rate)
    audio = read_audio(str(path))
    assert audio.shape == (2, int(2.5 * 48000)) and audio.dtype == np.float32
    assert np.array_equal(audio[0], audio[1])
    spectrum = np.abs(np.fft.rfft(audio[0]))
    assert abs(np.argmax(spectrum) * 48000 / audio.shape[-1] - 440) < 1
