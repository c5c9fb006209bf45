"""The GPU path, as far as a CPU can exercise it: IO binding, provider options, the fallback report."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import acestep_edge
from acestep_edge.runtime.bundle import Bundle, SessionOptions
from acestep_edge.runtime.device import DURATION_BUCKETS, TRT_CACHE_DIR, DeviceOptions, provider_entries
from acestep_edge.runtime.pipeline import Pipeline

DEMO = acestep_edge.DEMO_BUNDLE
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _request(**changes) -> dict:
    request = json.loads(acestep_edge.DEMO_REQUEST.read_text())
    # 6 steps with the CFG interval [0, 0.5]: guided (batch 2) steps first, then unguided (batch 1) ones.
    request.update({"duration": 12, "steps": 6, "outputFormat": "WAV", **changes})
    request["settings"]["cfgIntervalEnd"] = 0.5
    return request


def test_io_binding_render_equals_session_run():
    plain = Pipeline.load(DEMO, threads=1, device=DeviceOptions(io_binding=False))
    bound = Pipeline.load(DEMO, threads=1, device=DeviceOptions(io_binding=True))
    request = _request()
    render = bound.start(request)
    results = [plain.generate(request), render.result()]
    assert render.dit.io_binding and not plain.start(request).dit.io_binding
    # Both batch sizes went through a binding: constants bound once each, reused on every step.
    assert sorted(render.dit._bound) == [("main", "cond"), ("main", "pair")]
    assert sorted({b for b, _ in render.dit.calls}) == [1, 2] and len(render.dit.calls) == 6
    assert np.array_equal(results[0].latents, results[1].latents)
    assert np.array_equal(results[0].audio, results[1].audio)


def test_cpu_defaults_to_plain_run_and_gpu_to_binding():
    assert not SessionOptions("cpu").io_binding
    assert SessionOptions("cuda").io_binding and SessionOptions("tensorrt").io_binding
    assert not SessionOptions("cuda", device=DeviceOptions(io_binding=False)).io_binding


def test_cuda_graph_is_dropped_when_the_session_is_on_cpu():
    bundle = Bundle(DEMO, SessionOptions("cpu", threads=1, device=DeviceOptions(io_binding=True, cuda_graph=True)))
    runner = bundle.dit_runner({1: {}})
    assert runner.device == "cpu" and not runner.cuda_graph


def test_cuda_options():
    chain = provider_entries("cuda", DeviceOptions(device_id=1, cuda_graph=True), "/b", "dit", {"use_tf32": "0"})
    assert [c if isinstance(c, str) else c[0] for c in chain] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    options = chain[0][1]
    assert options["device_id"] == "1" and options["enable_cuda_graph"] == "1" and options["use_tf32"] == "0"
    # CUDA graphs only for the DiT (the one graph whose buffers are bound); never for the VAE's chunk loop.
    vae = provider_entries("cuda", DeviceOptions(cuda_graph=True), "/b", "vae_decoder")[0][1]
    assert "enable_cuda_graph" not in vae
    assert provider_entries("cpu", DeviceOptions(), "/b", "dit") == ["CPUExecutionProvider"]


def _shapes(text: str) -> dict[str, list[tuple[int, ...]]]:
    out: dict[str, list[tuple[int, ...]]] = {}
    for item in text.split(","):
        name, dims = item.split(":")
        out.setdefault(name, []).append(tuple(int(d) for d in dims.split("x")))
    return out


def test_tensorrt_options(tmp_path):
    chain = provider_entries("tensorrt", DeviceOptions(), tmp_path, "dit", encoder_dim=48)
    names = [c if isinstance(c, str) else c[0] for c in chain]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = chain[0][1]
    assert trt["trt_fp16_enable"] == "1" and trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / TRT_CACHE_DIR)
    mins, opts, maxs = (_shapes(trt[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
    assert set(mins) == {"x", "t", "encoder_states", "src_latents", "chunk_mask"}
    for name in mins:
        assert len(mins[name]) == len(opts[name]) == len(maxs[name]) == len(DURATION_BUCKETS)
        for lo, mid, hi in zip(mins[name], opts[name], maxs[name]):
            assert all(a <= b <= c for a, b, c in zip(lo, mid, hi)), (name, lo, mid, hi)
    # The buckets cover 10 s .. 600 s at 25 frames/s, batch 1 (unguided) to 2 (CFG).
    assert mins["x"][0][:2] == (1, 250) and maxs["x"][-1][:2] == (2, 15000)
    assert maxs["encoder_states"][0][2] == 48
    # Other graphs get the caches but no DiT profile; fp16 can be turned off.
    vae = provider_entries("tensorrt", DeviceOptions(trt_fp16=False), tmp_path, "vae_decoder")[0][1]
    assert "trt_profile_min_shapes" not in vae and vae["trt_fp16_enable"] == "0"


@pytest.mark.skipif(HAS_CUDA, reason="this ONNX Runtime has CUDA; the fallback cannot be provoked")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_fallback_is_reported(provider):
    pipeline = Pipeline.load(DEMO, provider=provider, threads=1)
    want = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    with pytest.warns(RuntimeWarning, match=want):
        result = pipeline.generate(_request(steps=2))
    assert result.metadata["providers"]["dit"] == ["CPUExecutionProvider"]
    assert any(want in w and "dit" in w for w in result.metadata["warnings"])
    if provider == "tensorrt":  # the demo bundle is --ops standard: TensorRT wants the plain lowering
        assert any("--ops plain" in w for w in result.metadata["warnings"])


def test_cpu_session_reports_nothing():
    bundle = Bundle(DEMO, SessionOptions("cpu", threads=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle.session("dit")
    assert bundle.provider_warnings == [] and bundle.preferred_provider_active()


def test_cuda_graph_refusal_falls_back_and_is_reported(monkeypatch):
    """ORT refuses enable_cuda_graph when a node is off the GPU; the bundle retries without it and says so."""
    real = ort.InferenceSession
    seen = []

    def session(path, sess_options=None, providers=None):
        graphs = any(isinstance(p, tuple) and p[1].get("enable_cuda_graph") == "1" for p in providers)
        seen.append(graphs)
        if graphs:
            raise RuntimeError("This session cannot use the CUDA Graph feature as requested by the user")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    bundle = Bundle(DEMO, SessionOptions("cuda", threads=1, device=DeviceOptions(cuda_graph=True)))
    with pytest.warns(RuntimeWarning, match="CUDA graphs are not possible"):
        bundle.session("dit")
    assert seen == [True, False] and not bundle.cuda_graph
    assert not bundle.dit_runner({1: {}}).cuda_graph
    assert any("CUDA graphs" in w for w in bundle.provider_warnings)


@pytest.mark.parametrize("settings", [
    {"task": "cover", "coverConditioningScale": 0.5},  # switches to a second condition mid-render
    {"useNegativePrompt": True},  # negative caption of another length: two batch-1 halves per step
], ids=["cover-switch", "negative-prompt"])
def test_io_binding_equals_session_run_for_editing_branches(tmp_path, settings):
    import soundfile as sf

    t = np.arange(4 * 44100) / 44100
    sf.write(str(tmp_path / "clip.wav"), 0.3 * np.sin(2 * np.pi * 330 * t), 44100)
    request = _request(inputs={"audio": str(tmp_path / "clip.wav")}, negativePrompt="muddy, noisy, off key")
    del request["duration"]
    request["settings"].update(settings)
    plain = Pipeline.load(DEMO, threads=1, device=DeviceOptions(io_binding=False))
    bound = Pipeline.load(DEMO, threads=1, device=DeviceOptions(io_binding=True))
    render = bound.start(request)
    expected, got = plain.generate(request), render.result()
    assert np.array_equal(expected.latents, got.latents)
    keys = set(render.dit._bound)
    if "coverConditioningScale" in settings:
        assert {key[0] for key in keys} == {"main", "switch"}
    else:
        assert ("main", "null") in keys and ("main", "pair") not in keys
