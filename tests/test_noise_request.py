"""settings.noise / settings.noiseGpu, the CLI's --noise-source / --noise-gpu, per-result seeds and the
response's noise metadata, on the committed demo bundle (no torch needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import acestep_edge
from acestep_edge.runtime import noise
from acestep_edge.runtime.pipeline import GenerationConfig, Pipeline
from acestep_edge.runtime.request import RequestError, parse_request

DEMO_BUNDLE = Path(acestep_edge.__file__).parent / "demo_bundle"
UUID = "6a1e2f2c-52a2-4f57-9d0b-0f1a9c2b7d11"


def _req(settings=None, **top):
    req = {"taskType": "audioInference", "taskUUID": UUID, "positivePrompt": "calm piano", "duration": 10,
           "steps": 1, "seed": 81563, "outputFormat": "WAV", "CFGScale": 1.0}
    req.update(top)
    if settings:
        req["settings"] = settings
    return req


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(DEMO_BUNDLE)


def test_settings_parse():
    s = parse_request(_req()).settings
    assert (s.noise, s.noise_gpu) == (None, None)
    s = parse_request(_req({"noise": "Torch-CPU"})).settings
    assert s.noise == "torch-cpu"
    assert parse_request(_req({"noiseGpu": "A100"})).settings.noise_gpu == "a100"
    assert parse_request(_req({"noise": "torch-cuda", "noiseGpu": 84})).settings.noise_gpu == "84x2048"
    assert parse_request(_req({"noiseGpu": "84x1536"})).settings.noise_gpu == "84x1536"


@pytest.mark.parametrize("settings,param,code", [
    ({"noise": "curand"}, "settings.noise", "invalidEnum"),
    ({"noise": 3}, "settings.noise", "invalidEnum"),
    ({"noiseGpu": "v100"}, "settings.noiseGpu", "invalidParameter"),
    ({"noiseGpu": "84x1000"}, "settings.noiseGpu", "invalidParameter"),
    ({"noiseGpu": [1]}, "settings.noiseGpu", "invalidParameter"),
    ({"noise": "numpy", "noiseGpu": "a100"}, "settings.noiseGpu", "conflictingParameters"),
    ({"noise": "torch-cpu", "noiseGpu": "h100"}, "settings.noiseGpu", "conflictingParameters"),
])
def test_bad_settings_name_the_field(settings, param, code):
    with pytest.raises(RequestError) as info:
        parse_request(_req(settings))
    assert (info.value.parameter, info.value.code) == (param, code)
    assert info.value.message.startswith(param)


@pytest.mark.parametrize("source", noise.SOURCES)
def test_render_draws_the_named_source(pipe, source):
    render = pipe.start(_req({"noise": source}))
    np.testing.assert_array_equal(render.noise, noise.draw(source, 81563, 250))
    result = render.result()
    assert result.metadata["noise"]["source"] == source and result.metadata["noise"]["seed"] == 81563


def test_default_is_torch_cuda_h100(pipe):
    render = pipe.start(_req())
    np.testing.assert_array_equal(render.noise, noise.draw("torch-cuda", 81563, 250, noise.gpu("h100")))
    assert render.result().metadata["noise"] == {"source": "torch-cuda", "seed": 81563, "gpu": "h100",
                                                  "dtype": "bfloat16"}


def test_gpu_setting_reaches_the_draw(pipe):
    render = pipe.start(_req({"noiseGpu": "t4"}))
    np.testing.assert_array_equal(render.noise, noise.draw("torch-cuda", 81563, 250, noise.gpu("t4")))
    assert not np.array_equal(render.noise, noise.draw("torch-cuda", 81563, 250))  # float16, not bf16


def test_each_result_has_its_own_seed_and_fresh_generator(pipe):
    results = pipe.generate_all(_req({"noise": "torch-cpu"}, numberResults=3))
    assert [r.seed for r in results] == [81563, 81564, 81565]
    assert [r.metadata["noise"]["seed"] for r in results] == [81563, 81564, 81565]
    # Result 2 is what seed 81565 gives alone: nothing carries over from the draws before it.
    alone = pipe.generate(_req({"noise": "torch-cpu"}, seed=81565))
    np.testing.assert_array_equal(results[2].latents, alone.latents)
    assert not np.array_equal(results[0].latents, results[1].latents)


def test_pipeline_defaults_and_request_override():
    pipe = Pipeline.load(DEMO_BUNDLE, config=GenerationConfig(noise_source="numpy"))
    assert pipe.noise_source(parse_request(_req())).source == "numpy"
    assert pipe.noise_source(parse_request(_req({"noise": "torch-cuda"}))).gpu.name == "h100"
    with pytest.raises(RequestError) as info:
        pipe.start(_req({"noiseGpu": "a100"}))
    assert info.value.parameter == "settings.noiseGpu" and info.value.code == "conflictingParameters"
    pipe = Pipeline.load(DEMO_BUNDLE, config=GenerationConfig(noise_gpu="l4"))
    assert pipe.noise_source(parse_request(_req())).gpu.name == "l4"
    assert pipe.noise_source(parse_request(_req({"noiseGpu": "a100"}))).gpu.name == "a100"


def test_explicit_noise_is_reported(pipe):
    x = np.random.default_rng(0).standard_normal((1, 250, 64)).astype(np.float32)
    result = pipe.generate(_req(), noise=x)
    assert result.metadata["noise"] == {"source": "explicit", "seed": 81563}


def _cli(tmp_path, *args):
    req = tmp_path / "req.json"
    req.write_text(json.dumps(_req()))
    return subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", str(req), "--bundle", str(DEMO_BUNDLE),
                           "--out", str(tmp_path / "out") + "/", *args], capture_output=True, text=True)


def test_cli_noise_flags(tmp_path):
    done = _cli(tmp_path, "--noise-source", "torch-cuda", "--noise-gpu", "rtx4090")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["noise"] == {"source": "torch-cuda", "seed": 81563, "gpu": "rtx4090",
                                                "dtype": "bfloat16"}
    done = _cli(tmp_path, "--noise-source", "torch-cpu")
    assert json.loads(done.stdout)["noise"]["source"] == "torch-cpu"


@pytest.mark.parametrize("args", [("--noise-gpu", "v100"), ("--noise-source", "numpy", "--noise-gpu", "a100"),
                                  ("--noise-source", "curand")])
def test_cli_bad_noise_flags_write_nothing(tmp_path, args):
    done = _cli(tmp_path, *args)
    assert done.returncode == 2 and "--noise-" in done.stderr
    assert not (tmp_path / "out").exists()
