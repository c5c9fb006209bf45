"""The VAE decoder's export rewrite (export/vae_layout.py) and the fp32 VAE budgets and over-budget hint."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.export


def _decoder_program():
    import torch

    from acestep_edge.export.graphs import VaeDecoderGraph, graph_specs
    from acestep_edge.export.onnx_export import export_program
    from acestep_edge.models.config import tiny
    from acestep_edge.models.vae import OobleckVae

    preset = tiny()
    torch.manual_seed(3)
    vae = OobleckVae(preset.vae)
    with torch.no_grad():  # away from the initialisation so that weight norm is not the identity
        for name, p in vae.named_parameters():
            if "weight_g" in name or "alpha" in name:
                p.add_(0.3 * torch.randn_like(p))
    spec = graph_specs(preset)["vae_decoder"]
    return lambda: export_program(spec, VaeDecoderGraph(vae), preset, "standard").model


def _run(model, tmp_path, name, latents):
    import onnx_ir as ir
    import onnxruntime as ort

    path = tmp_path / f"{name}.onnx"
    ir.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"latents": latents})[0]


def test_conv2d_rewrite_keeps_the_decode(tmp_path):
    from acestep_edge.export.vae_layout import conv1d_as_conv2d, fold_weight_norm

    make = _decoder_program()
    plain, rewritten = make(), make()
    fold_weight_norm(rewritten)
    count = conv1d_as_conv2d(rewritten)
    convs = [n for n in rewritten.graph if n.op_type in ("Conv", "ConvTranspose")]
    assert count == len(convs) > 0
    assert all(len(n.inputs[1].const_value.shape) == 4 for n in convs)  # constant, 4-D: folded and 2-D
    assert not [n for n in rewritten.graph if n.op_type == "ReduceL2"]  # no weight norm left to compute
    assert [v.name for v in rewritten.graph.inputs] == ["latents"] and [v.name for v in rewritten.graph.outputs] == ["audio"]
    for frames in (3, 37):
        z = np.random.default_rng(frames).standard_normal((2, 64, frames), dtype=np.float32)
        want, got = _run(plain, tmp_path, "plain", z), _run(rewritten, tmp_path, "conv2d", z)
        assert got.shape == want.shape == (2, 2, frames * 1920)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_rewrite_refuses_a_graph_it_does_not_understand():
    import onnx_ir as ir

    from acestep_edge.export.vae_layout import conv1d_as_conv2d

    model = _decoder_program()()
    first = next(iter(model.graph))
    reshape = ir.Node("", "Reshape", [first.outputs[0], first.outputs[0]], name="odd")
    model.graph.append(reshape)
    before = [n.op_type for n in model.graph]
    with pytest.raises(ValueError, match="Reshape"):
        conv1d_as_conv2d(model)
    assert [n.op_type for n in model.graph] == before


def test_vae_export_writes_the_exact_overlap(tiny_official, tmp_path):
    from acestep_edge.export.bundle import export_bundle
    from acestep_edge.runtime.postprocess import exact_tile_overlap

    out = export_bundle(tiny_official, tmp_path / "b", graphs=["vae_decoder"])
    manifest = json.loads((out / "manifest.json").read_text())
    ratios = manifest["model"]["vae"]["downsampling_ratios"]
    assert manifest["sampler_defaults"]["vae_overlap"] == exact_tile_overlap(ratios) < 64
    entry = manifest["graphs"]["vae_decoder"]
    assert entry["parity"]["max_rel_err"] <= entry["budget"]["max_rel_err"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_over_budget_hint_names_what_can_help(tiny_official, tmp_path, monkeypatch, precision):
    from acestep_edge.export import precision as precision_mod
    from acestep_edge.export.bundle import export_bundle
    from acestep_edge.export.onnx_export import ExportError

    monkeypatch.setitem(precision_mod.BUDGETS, ("vae_decoder", precision), 1e-12)
    with pytest.raises(ExportError) as err:
        export_bundle(tiny_official, tmp_path / "b", graph_precision={"vae_decoder": precision},
                      graphs=["vae_decoder"])
    msg = str(err.value)
    assert f"graph 'vae_decoder' in {precision}" in msg and "--allow-over-budget" in msg
    if precision == "fp32":  # never "export it in fp32" to an fp32 graph
        assert "=fp32" not in msg and "already the highest precision" in msg
    else:
        assert "--graph-precision vae_decoder=fp32" in msg


def test_fp32_budget_is_per_graph():
    from acestep_edge.export.precision import BUDGETS, budget_for

    assert budget_for("vae_decoder", "fp32") == BUDGETS[("vae_decoder", "fp32")] > BUDGETS["fp32"]
    assert budget_for("dit", "fp32") == BUDGETS["fp32"]
