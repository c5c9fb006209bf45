"""Render defaults: one resolve step (manifest → GenerationConfig → request), and the manifest agrees with the runtime."""

from __future__ import annotations

import json
from pathlib import Path

from acestep_edge.runtime import sampler
from acestep_edge.runtime.defaults import FORMAT_DEFAULTS, resolve
from acestep_edge.runtime.pipeline import GenerationConfig
from acestep_edge.runtime.postprocess import exact_tile_overlap
from acestep_edge.runtime.request import DEFAULT_CFG, DEFAULT_STEPS, Settings, parse_request

MANIFEST = Path(__file__).resolve().parents[1] / "acestep_edge" / "demo_bundle" / "manifest.json"
UUID = "63675dd8-9c96-4d90-9eea-e239ce58d438"


def _request(**settings):
    return parse_request({"taskType": "audioInference", "taskUUID": UUID, "positivePrompt": "x",
                          "settings": settings})


def test_committed_manifest_agrees_with_the_runtime():
    manifest = json.loads(MANIFEST.read_text())
    written = manifest["sampler_defaults"]
    # Keys the runtime resolves: the same values as the fallback for older manifests, but the VAE overlap,
    # which the exporter sets to the decoder's exact context (bundles before that wrote the official 64).
    assert {k: written[k] for k in FORMAT_DEFAULTS if k != "vae_overlap"} == \
        {k: v for k, v in FORMAT_DEFAULTS.items() if k != "vae_overlap"}
    ratios = manifest["model"]["vae"]["downsampling_ratios"]
    assert written["vae_overlap"] in (FORMAT_DEFAULTS["vae_overlap"], exact_tile_overlap(ratios))
    # Keys the request and the sampler own: the manifest only records them, so they must agree.
    assert written["steps"] == DEFAULT_STEPS and written["cfg_scale"] == DEFAULT_CFG
    assert written["guidance"] == Settings().guidance_type
    assert written["apg"] == {"momentum": sampler.APG_MOMENTUM, "norm_threshold": sampler.APG_NORM_THRESHOLD,
                              "eta": 0.0}


def test_manifest_then_config_then_request():
    manifest = {"shift": 2.0, "chunk_mask": 0.5, "vae_chunk": 256, "vae_overlap": 16}
    plain = resolve(manifest)
    assert (plain.shift, plain.chunk_mask, plain.vae_chunk, plain.vae_overlap) == (2.0, 0.5, 256, 16)
    config = resolve(manifest, GenerationConfig(shift=4.0, vae_overlap=0))
    assert (config.shift, config.chunk_mask, config.vae_chunk, config.vae_overlap) == (4.0, 0.5, 256, 0)
    assert config.shift_for(_request()) == 4.0
    assert config.shift_for(_request(shift=1.5)) == 1.5


def test_missing_keys_fall_back_to_the_format_values():
    assert resolve({}) == resolve(None) == resolve(FORMAT_DEFAULTS)
    assert resolve({"shift": 5.0}).vae_chunk == FORMAT_DEFAULTS["vae_chunk"]
