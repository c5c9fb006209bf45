"""End to end: runtime vs the PyTorch reference, shared requests → audio files → responses, CLI errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import acestep_edge
from acestep_edge.runtime.pipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "requests"
DEMO_BUNDLE = acestep_edge.DEMO_BUNDLE
FORMATS = ("WAV", "FLAC", "OGG", "MP3")


def shared_requests() -> list[Path]:
    """The four real Runware requests kept in examples/requests/ (hosted API responses beside them)."""
    files = sorted(p for p in EXAMPLES.glob("*.json") if not p.name.endswith(".response.json"))
    assert len(files) == 4, f"examples/requests/ should hold the four example requests, found {files}"
    return files


# -- runtime vs reference ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tiny_official):
    from acestep_edge.models.reference import ReferencePipeline

    return ReferencePipeline.from_checkpoint(tiny_official)


@pytest.mark.export
@pytest.mark.parametrize("guidance,interval", [("apg", (0.0, 1.0)), ("apg", (0.0, 0.6)),
                                               ("cfg", (0.0, 1.0)), ("cfg", (0.2, 0.7))])
def test_runtime_latents_match_reference(tiny_fp32_bundle, reference, guidance, interval):
    """Same checkpoint, same explicit noise, 50 steps: schedule, momentum and interval provably agree."""
    from acestep_edge.models.reference import ReferenceParams

    lyrics = "[Verse]\nthread by thread we cross the blue"
    request = {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "warm analog synth",
               "duration": 10, "steps": 50, "CFGScale": 7.0, "seed": 5,
               "settings": {"lyrics": lyrics, "bpm": 120, "keyScale": "D minor", "timeSignature": "4/4",
                            "vocalLanguage": "en", "guidanceType": guidance,
                            "cfgIntervalStart": interval[0], "cfgIntervalEnd": interval[1]}}
    noise = np.random.default_rng(11).standard_normal((1, 250, 64)).astype(np.float32)
    ours = Pipeline.load(tiny_fp32_bundle).generate(request, noise=noise)
    params = ReferenceParams(caption="warm analog synth", lyrics=lyrics, duration=10, steps=50, cfg_scale=7.0,
                             guidance=guidance, cfg_interval=interval, bpm=120, key_scale="D minor",
                             time_signature=4, language="en")
    ref = reference.render(params, noise=_torch(noise))
    assert ours.metadata["prompts"]["caption"] == reference.build_prompts(params)[0]
    err = np.abs(ours.latents - ref.latents).max() / np.abs(ref.latents).max()
    assert err <= 1e-4, err
    assert ours.audio.shape == ref.audio.shape == (2, 480000)


def _torch(array):
    import torch

    return torch.from_numpy(array)


# -- shared requests on the committed tiny bundle ---------------------------------------------

@pytest.mark.parametrize("request_file", shared_requests(), ids=lambda p: p.stem)
def test_shared_request_renders_in_every_format(demo_pipeline, request_file, tmp_path):
    """Each real request at its own duration (180–300 s). Only `steps` is lowered, to keep CI short:
    the step count does not change shapes, files or the response."""
    from acestep_edge.runtime.delivery import deliver
    from acestep_edge.runtime.request import parse_request

    data = {**json.loads(request_file.read_text()), "steps": 2}
    result = demo_pipeline.generate(data)
    samples = int(round(data["duration"] * 48000))
    assert result.sample_rate == 48000 and result.audio.shape == (2, samples)
    assert result.seed == data["seed"]
    for fmt in FORMATS:
        request = parse_request({**data, "outputFormat": fmt})
        response = deliver(request, result, tmp_path / f"out.{fmt.lower()}")
        assert response["taskUUID"] == data["taskUUID"] and response["seed"] == data["seed"]
        assert uuid.UUID(response["audioUUID"]).version == 4
        path = Path(response["audioURL"].removeprefix("file://"))
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (48000, 2)
        tolerance = 0 if fmt in ("WAV", "FLAC") else 4800  # lossy codecs may pad/trim a few ms
        assert abs(info.frames - samples) <= tolerance, (fmt, info.frames, samples)


def test_number_results_render_consecutive_seeds(demo_pipeline):
    data = json.loads(shared_requests()[0].read_text())
    data.update(duration=10, steps=3, numberResults=2, seed=40)
    results = demo_pipeline.generate_all(data)
    assert [r.seed for r in results] == [40, 41]
    assert not np.array_equal(results[0].latents, results[1].latents)


def test_step_wise_render_equals_generate(demo_pipeline):
    data = json.loads(shared_requests()[0].read_text())
    data.update(duration=10, steps=4)
    render = demo_pipeline.start(data)
    steps = [step.index for step in render]
    assert steps == [0, 1, 2, 3]
    assert np.array_equal(render.result().latents, demo_pipeline.generate(data).latents)


def test_cancel_stops_before_writing(demo_pipeline):
    import threading

    from acestep_edge.runtime.pipeline import Cancelled

    event = threading.Event()
    event.set()
    data = json.loads(shared_requests()[0].read_text())
    data.update(duration=10, steps=4)
    with pytest.raises(Cancelled):
        demo_pipeline.generate(data, cancel=event)


# -- the CLI ---------------------------------------------------------------------------------

def run_cli(*args, stdin: str | None = None, cwd=None):
    return subprocess.run([sys.executable, "-m", "acestep_edge.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd)


def base_request(**overrides) -> dict:
    data = {"taskType": "audioInference", "taskUUID": "6a1e2f2c-52a2-4f57-9d0b-0f1a9c2b7d11",
            "positivePrompt": "a short test", "duration": 10, "steps": 2, "seed": 3, "outputFormat": "WAV"}
    data.update(overrides)
    return data


def test_cli_generate_writes_file_latents_and_prints_response(tmp_path):
    out = tmp_path / "song.wav"
    latents = tmp_path / "latents.npy"
    proc = run_cli("generate", "-", "--bundle", str(DEMO_BUNDLE), "--out", str(out), "--save-latents",
                   str(latents), stdin=json.dumps(base_request()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    response = json.loads(proc.stdout)
    assert response["audioURL"] == out.resolve().as_uri() and out.exists()
    assert set(response["timings"]) >= {"text_encoder", "condition_encoder", "dit", "vae_decoder"}
    assert np.load(latents).shape == (1, 250, 64)
    # The saved latents fed back as noise reproduce a deterministic render path.
    proc2 = run_cli("generate", "-", "--bundle", str(DEMO_BUNDLE), "--out", str(tmp_path / "b.wav"),
                    "--noise", str(latents), stdin=json.dumps(base_request()))
    assert proc2.returncode == 0, proc2.stdout


def test_cli_base64_output_writes_no_file(tmp_path):
    proc = run_cli("generate", "-", "--bundle", str(DEMO_BUNDLE), stdin=json.dumps(base_request(
        outputType="base64Data")), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = base64.b64decode(json.loads(proc.stdout)["audioBase64Data"])
    assert payload[:4] == b"RIFF" and not list(tmp_path.iterdir())


BAD_INPUTS = [
    ("missing prompt", {"positivePrompt": None}, "positivePrompt"),
    ("wrong type duration", {"duration": "long"}, "duration"),
    ("duration too short", {"duration": 5}, "duration"),
    ("duration too long", {"duration": 601}, "duration"),
    ("steps zero", {"steps": 0}, "steps"),
    ("CFGScale too high", {"CFGScale": 99}, "CFGScale"),
    ("bpm too low", {"settings": {"bpm": 10}}, "settings.bpm"),
    ("unknown guidance", {"settings": {"guidanceType": "magic"}}, "settings.guidanceType"),
    ("bad keyScale", {"settings": {"keyScale": "H major"}}, "settings.keyScale"),
    ("bad timeSignature", {"settings": {"timeSignature": "5/4"}}, "settings.timeSignature"),
    ("over-long lyrics", {"settings": {"lyrics": "la " * 5000}}, "settings.lyrics"),
    ("bad audioSettings", {"outputFormat": "MP3", "audioSettings": {"sampleRate": 12345}},
     "audioSettings.sampleRate"),
    ("unknown outputFormat", {"outputFormat": "AAC"}, "outputFormat"),
]


@pytest.mark.parametrize("name,change,parameter", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_cli_bad_input_is_a_clean_error(tmp_path, name, change, parameter):
    data = base_request()
    for key, value in change.items():
        if value is None:
            data.pop(key)
        elif key == "settings":
            data["settings"] = value
        else:
            data[key] = value
    out = tmp_path / "never.wav"
    proc = run_cli("generate", "-", "--bundle", str(DEMO_BUNDLE), "--out", str(out), stdin=json.dumps(data),
                   cwd=tmp_path)
    assert proc.returncode != 0
    error = json.loads(proc.stdout)["errors"][0]
    assert error["parameter"] == parameter, error
    assert error["taskUUID"] == data["taskUUID"] and error["taskType"] == "audioInference"
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_unreadable_bundle_is_a_clean_error(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{not json")
    proc = run_cli("generate", "-", "--bundle", str(bundle), stdin=json.dumps(base_request()), cwd=tmp_path)
    assert proc.returncode != 0
    error = json.loads(proc.stdout)["errors"][0]
    assert "manifest.json" in error["message"] and "acestep-edge export" in error["message"]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_cli_help_explains_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("demo", "generate", "export", "inspect"):
        assert command in proc.stdout
    gen = run_cli("generate", "--help")
    assert "--save-latents" in gen.stdout and "--noise" in gen.stdout and "--provider" in gen.stdout
