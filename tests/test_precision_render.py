"""Whole renders per precision on tiny random checkpoints: same noise, 50 steps, APG, compared to the fp32
render by a multi-resolution STFT log-magnitude distance; and an fp16 bundle whose lyric encoder
exceeds the fp16 range renders without NaN or Inf."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from acestep_edge.export.bundle import export_bundle
from acestep_edge.export.parity import stft_log_magnitude_distance
from acestep_edge.export.precision import RENDER_BUDGETS
from acestep_edge.runtime.pipeline import Pipeline
from lora_util import with_dit_of

pytestmark = pytest.mark.export  # torch, onnx and the export side

RENDER_GRAPHS = ["text_encoder", "condition_encoder", "dit", "vae_decoder"]
LYRICS = "[Verse]\nthread by thread we cross the blue"


def _request(seed=5):
    return {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "warm analog synth",
            "duration": 10, "steps": 50, "CFGScale": 7.0, "seed": seed,
            "settings": {"lyrics": LYRICS, "bpm": 120, "keyScale": "D minor", "timeSignature": "4/4",
                         "vocalLanguage": "en", "guidanceType": "apg"}}




@pytest.fixture(scope="module")
def bundles(tiny_official, tiny_fp32_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision_render")
    out = {"fp32": tiny_fp32_bundle,  # the session's shared export (all graphs, standard ops)
           # per-graph parity of fp16/int4 is tests/test_precision.py's job; int8's is checked here
           "fp16": export_bundle(tiny_official, root / "fp16", precision="fp16", graphs=RENDER_GRAPHS, parity=False)}
    for precision in ("int8", "int4"):
        dit = export_bundle(tiny_official, root / f"{precision}-dit", precision=precision, graphs=["dit"],
                            parity=precision == "int8")
        out[precision] = with_dit_of(out["fp32"], dit, root / precision)
    return out


@pytest.fixture(scope="module")
def renders(bundles):
    noise = np.random.default_rng(11).standard_normal((1, 250, 64)).astype(np.float32)
    out = {p: Pipeline.load(b, threads=2).generate(_request(), noise=noise) for p, b in bundles.items()}
    other = np.random.default_rng(12).standard_normal((1, 250, 64)).astype(np.float32)
    out["fp32_other_noise"] = Pipeline.load(bundles["fp32"], threads=2).generate(_request(), noise=other)
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_render_close_to_fp32(renders, precision):
    ref, ours = renders["fp32"], renders[precision]
    assert np.isfinite(ours.audio).all() and ours.audio.shape == ref.audio.shape
    lat = float(np.abs(ours.latents - ref.latents).max() / np.abs(ref.latents).max())
    dist = stft_log_magnitude_distance(ours.audio, ref.audio)
    print(f"{precision}: latent max rel err {lat:.3g}, MR-STFT log-magnitude distance {dist:.3f} dB")
    budget = RENDER_BUDGETS[precision]
    assert dist <= budget["stft_db"], (precision, dist)
    assert lat <= budget["latent_max_rel_err"], (precision, lat)


def test_render_distance_orders_precisions(renders):
    """The metric separates the precisions as their bits say: fp16 < int8 < int4, and a render from other
    noise is further away than any of them (the distance is not saturated)."""
    ref = renders["fp32"].audio
    d = {p: stft_log_magnitude_distance(renders[p].audio, ref) for p in ("fp16", "int8", "int4", "fp32_other_noise")}
    print(d)
    assert d["fp16"] < d["int8"] < d["int4"] < d["fp32_other_noise"], d


def test_manifest_and_response_report_precision(bundles, renders):
    graphs = json.loads((bundles["int8"] / "manifest.json").read_text())["graphs"]
    assert graphs["dit"]["precision"] == "int8" and graphs["vae_decoder"]["precision"] == "fp32"
    q = graphs["dit"]["quantization"]
    assert q["op"] == "com.microsoft.DynamicQuantizeMatMul" and q["bits"] == 8 and q["provider"] == "cpu" and q["why"]
    assert graphs["dit"]["parity"]["max_rel_err"] <= graphs["dit"]["budget"]["max_rel_err"]
    from acestep_edge.export.inspect import inspect_bundle

    text = inspect_bundle(bundles["int8"])
    assert "dit: dit.onnx" in text and "  int8  " in text and "DynamicQuantizeMatMul, 8-bit, per output channel" in text
    assert "budget 6.00e-02" in text
    assert "int8 weights on this CPU: " in text and "(stored u8; " in text
    assert renders["int8"].metadata["precisions"]["dit"] == "int8"
    assert renders["fp16"].metadata["precisions"]["condition_encoder"] == "fp32"
    assert renders["fp16"].metadata["precisions"]["vae_decoder"] == "fp16"


def test_int8_weight_forms_render_identically(bundles, renders):
    """The same int8 bundle run with its weights as stored (u8, zero point 128) and rewritten to s8 at session
    creation: identical latents and audio where both integer kernels are exact (VNNI CPUs; this project's
    Zen 4 guest: bit-identical), and the default form is the one the CPU's flags call for."""
    from acestep_edge.runtime.bundle import Bundle, SessionOptions
    from acestep_edge.runtime.cpu_features import int8_weight_form

    request = dict(_request(), steps=8)
    noise = np.random.default_rng(11).standard_normal((1, 250, 64)).astype(np.float32)
    out = {}
    for form in ("u8", "s8"):
        pipeline = Pipeline(Bundle(bundles["int8"], SessionOptions(threads=2, int8_weights=form)))
        out[form] = pipeline.generate(request, noise=noise)
        used = pipeline.bundle.weight_forms["dit"]
        assert (used["stored"], used["used"]) == ("u8", form), used
        assert out[form].metadata["int8_weights"]["dit"].startswith(f"{form} (stored u8")
    np.testing.assert_allclose(out["s8"].latents, out["u8"].latents, rtol=0, atol=1e-6)
    if int8_weight_form("u8", override="auto")[0] == "s8":  # a VNNI CPU: both kernels exact
        np.testing.assert_array_equal(out["s8"].latents, out["u8"].latents)
        np.testing.assert_array_equal(out["s8"].audio, out["u8"].audio)
    chosen = int8_weight_form("u8")[0]
    assert renders["int8"].metadata["int8_weights"]["dit"].startswith(f"{chosen} (stored u8")
    assert "int8_weights" in Pipeline(Bundle(bundles["int8"])).info()


def test_over_budget_fails_naming_the_graph(tiny_official, tmp_path, monkeypatch):
    from acestep_edge.export import precision as precision_mod
    from acestep_edge.export.onnx_export import ExportError

    monkeypatch.setitem(precision_mod.BUDGETS, ("dit", "int4"), 1e-4)
    with pytest.raises(ExportError, match=r"graph 'dit' in int4: measured max rel err .* exceeds its budget"):
        export_bundle(tiny_official, tmp_path / "b", precision="int4", graphs=["dit"])
    assert not (tmp_path / "b").exists()
    kept = export_bundle(tiny_official, tmp_path / "k", precision="int4", graphs=["dit"], allow_over_budget=True)
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["graphs"]["dit"]["over_budget"] is True and manifest["export"]["allow_over_budget"] is True


# -- the lyric encoder past the fp16 range ---------------------------------------------------------

@pytest.fixture(scope="module")
def loud_lyrics(tiny_preset, tmp_path_factory):
    """A tiny checkpoint whose last lyric-encoder down_proj is scaled ×2e5: its activations pass 65,504."""
    from acestep_edge.models.random_checkpoint import write_random_checkpoint
    from safetensors.torch import load_file, save_file

    root = write_random_checkpoint(tmp_path_factory.mktemp("loud"), tiny_preset, seed=3, layout="official",
                                   dtype=torch.float32)
    path = next(root.glob("acestep-v15-*/model.safetensors"))
    state = load_file(path)
    last = tiny_preset.dit.num_lyric_encoder_hidden_layers - 1
    state[f"encoder.lyric_encoder.layers.{last}.mlp.down_proj.weight"] *= 2e5
    save_file(state, path)
    return root


def test_fp16_bundle_survives_lyric_encoder_overflow(loud_lyrics, tmp_path):
    from acestep_edge.models.checkpoint import load_checkpoint

    ck = load_checkpoint(loud_lyrics, "official")
    peak = {}
    layer = ck.acestep.encoder.lyric_encoder.layers[-1].mlp.down_proj
    layer.register_forward_hook(lambda m, a, out: peak.__setitem__("max", float(out.detach().abs().max())))
    with torch.no_grad():
        ck.acestep.encoder.lyric_encoder(torch.randn(1, 40, ck.preset.dit.text_hidden_dim), None)
    assert peak["max"] > 65504, peak  # the hazard is real in this checkpoint

    bundle = export_bundle(loud_lyrics, tmp_path / "fp16", precision="fp16", graphs=RENDER_GRAPHS, parity=False)
    result = Pipeline.load(bundle, threads=2).generate(_request(seed=2))
    assert np.isfinite(result.latents).all() and np.isfinite(result.audio).all()
    assert result.metadata["precisions"]["condition_encoder"] == "fp32"


def test_fp16_condition_encoder_would_overflow(loud_lyrics, tmp_path):
    """Why the condition encoder stays fp32: the fp16 pass applied to it either refuses (a weight beyond
    the fp16 range: what this checkpoint has) or gives non-finite states."""
    import onnx_ir as ir
    from acestep_edge.export import parity as parity_mod
    from acestep_edge.export.fp16 import convert_fp16
    from acestep_edge.export.graphs import graph_specs
    from acestep_edge.export.onnx_export import export_program
    from acestep_edge.models.checkpoint import load_checkpoint

    ck = load_checkpoint(loud_lyrics, "official")
    spec = graph_specs(ck.preset)["condition_encoder"]
    program = export_program(spec, spec.build(ck), ck.preset, "standard")
    convert_fp16(program.model)
    try:
        ir.save(program.model, tmp_path / "cond16.onnx")
    except Exception as exc:  # onnx_ir wraps the pass's ValueError raised while the weight is written
        chain = []
        while exc is not None:
            chain.append(str(exc))
            exc = exc.__cause__
        assert any("beyond the fp16 range; export this graph in fp32" in c for c in chain), chain[-1]
        return
    inputs = parity_mod.case_inputs(spec, ck.preset, parity_mod.parity_cases(spec, ck.preset))
    (states,) = parity_mod.ort_outputs(tmp_path / "cond16.onnx", spec, inputs[:1])[0]
    assert not np.isfinite(states).all()
