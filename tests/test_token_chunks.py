"""The long-sequence lowering of the DiT: MLP in token chunks (a Scan per layer) and sliding attention as a Scan.

The tiny checkpoint's `dit` graph is exported with the defaults (MLP chunks of 512 tokens, chunked
sliding attention), with the lowering before it (`--mlp-chunk 0 --sliding-attention blocked`) and
with 7-token chunks (many chunks and a padded last one at every length), then run at lengths from
one token to past the default chunk: fp32 outputs agree to rounding. The precision passes still
rewrite the MLP's MatMuls (they run before the markers become Scans), the CPU int8 scheme's weights
inside the Scans are still flipped s8/u8 by the runtime, and the manifest records the lowering.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from acestep_edge.export.bundle import export_bundle  # noqa: E402
from acestep_edge.export.inspect import inspect_bundle  # noqa: E402
from acestep_edge.export.precision import budget_for  # noqa: E402

pytestmark = pytest.mark.export  # torch, onnx and the export side

FRAMES = (1, 2, 15, 519, 2051)  # DiT tokens 1, 1, 8, 260, 1026 (the last: 3 chunks of 512 → 342 each)
TOL = 1e-5  # relative to the largest |value|: fp32 rounding of a different summation order at most


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def bundles(tiny_official, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("token_chunks")
    variants = {"default": {}, "before": {"mlp_chunk": 0, "sliding_attention": "blocked"}, "chunk7": {"mlp_chunk": 7}}
    return {name: export_bundle(tiny_official, tmp / name, layout="official", ops="standard", graphs=["dit"],
                                parity=False, **kw) for name, kw in variants.items()}


def _feeds(session, frames: int, rng) -> dict:
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else {"B": 2, "T": frames, "S": 9}.get(d, 2) for d in i.shape]
        feeds[i.name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return feeds


def _scans(path) -> list:
    return [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Scan"]


def _body_ops(scan) -> list[str]:
    body = next(a.g for a in scan.attribute if a.name == "body")
    return [n.op_type for n in body.node]


def test_new_lowering_matches_the_old_one_in_fp32(bundles):
    sessions = {name: ort.InferenceSession(str(path / "dit.onnx"), providers=["CPUExecutionProvider"])
                for name, path in bundles.items()}
    rng = np.random.default_rng(3)
    for frames in FRAMES:
        feeds = _feeds(sessions["before"], frames, rng)
        ref = sessions["before"].run(None, feeds)[0]
        assert ref.shape == (2, frames, 64)
        for name in ("default", "chunk7"):
            got = sessions[name].run(None, feeds)[0]
            assert got.shape == ref.shape
            assert rel_err(got, ref) < TOL, (name, frames)


def test_manifest_and_graph_record_the_lowering(bundles):
    entries = {name: json.loads((path / "manifest.json").read_text())["graphs"]["dit"]
               for name, path in bundles.items()}
    assert entries["default"]["mlp"] == {"form": "chunked", "chunk": 512, "regions": 4}
    assert entries["chunk7"]["mlp"] == {"form": "chunked", "chunk": 7, "regions": 4}
    assert entries["before"]["mlp"] == {"form": "plain", "chunk": None, "regions": 0}
    assert entries["default"]["attention"]["sliding"] == "chunked"
    assert entries["before"]["attention"]["sliding"] == "blocked"
    assert entries["before"]["attention"]["sliding_requested"] == "blocked"
    command = json.loads((bundles["before"] / "manifest.json").read_text())["export"]["command"]
    assert "--sliding-attention blocked --mlp-chunk 0" in command
    # The ONNX graph agrees: 4 MLP Scans (3 MatMuls each) + 2 sliding + 2 full + 4 cross in the tiny DiT.
    scans = _scans(bundles["default"] / "dit.onnx")
    mlp = [s for s in scans if _body_ops(s).count("MatMul") == 3]
    assert len(mlp) == 4 and len(scans) == 12
    assert len(_scans(bundles["before"] / "dit.onnx")) == 6  # full and cross attention only
    model = onnx.load(str(bundles["default"] / "dit.onnx"), load_external_data=False)
    assert not any(n.domain.startswith("ai.acestep") for n in model.graph.node)  # the markers are gone
    assert "ai.acestep.mark" not in {o.domain for o in model.opset_import}
    assert "MLP in chunks of 512 tokens" in inspect_bundle(bundles["default"])
    assert "MLP in chunks" not in inspect_bundle(bundles["before"])


@pytest.mark.parametrize("precision,target,op", [("int4", "cpu", "MatMulNBits"), ("fp16", "cpu", "MatMul"),
                                                 ("int8", "gpu", "MatMulNBits"),
                                                 ("int8", "cpu", "DynamicQuantizeMatMul")])
def test_precision_passes_still_rewrite_the_chunked_mlp(tiny_official, tmp_path, precision, target, op):
    out = export_bundle(tiny_official, tmp_path / precision, layout="official", ops="standard", graphs=["dit"],
                        precision=precision, target=target, mlp_chunk=7, parity=True)
    entry = json.loads((out / "manifest.json").read_text())["graphs"]["dit"]
    assert entry["mlp"] == {"form": "chunked", "chunk": 7, "regions": 4}
    assert entry["parity"]["max_rel_err"] <= budget_for("dit", precision)  # vs the torch fp32 module
    model = onnx.load(str(out / "dit.onnx"), load_external_data=False)
    mlp = [s for s in model.graph.node if s.op_type == "Scan" and _body_ops(s).count(op) == 3]
    assert len(mlp) == 4
    if op != "MatMul":  # the MLP weights were quantised, not left in fp32 inside the Scan
        assert all("MatMul" not in _body_ops(s) for s in mlp)
    else:
        assert all(_body_ops(s).count("Cast") >= 6 for s in mlp)  # fp16 MatMuls between fp32 casts


def test_cpu_int8_weights_inside_the_mlp_scans_take_either_form(tiny_official, tmp_path):
    """The CPU int8 scheme's MLP DynamicQuantizeMatMul nodes sit in Scan bodies, their weights in the main
    graph: the runtime's s8/u8 rewrite (runtime/int8_form.py) reaches them all, with the same output."""
    from acestep_edge.runtime.bundle import Bundle, SessionOptions

    out = export_bundle(tiny_official, tmp_path / "int8", layout="official", ops="standard", graphs=["dit"],
                        precision="int8", target="cpu", mlp_chunk=7, parity=False)
    entry = json.loads((out / "manifest.json").read_text())["graphs"]["dit"]
    model = onnx.load(str(out / "dit.onnx"), load_external_data=False)
    top = sum(n.op_type == "DynamicQuantizeMatMul" for n in model.graph.node)
    assert 0 < top < entry["quantization"]["rewritten_ops"]  # the MLPs' 12 are in the Scans
    outs, feeds = {}, None
    for form in ("u8", "s8"):
        bundle = Bundle(out, SessionOptions(threads=1, int8_weights=form))
        session = bundle.session("dit")
        used = bundle.weight_forms["dit"]
        assert (used["used"], used["ops"]) == (form, entry["quantization"]["rewritten_ops"]), used
        feeds = feeds or _feeds(session, 37, np.random.default_rng(3))  # 37 tokens: 6 chunks, the last padded
        outs[form] = session.run(None, feeds)[0]
    assert np.isfinite(outs["s8"]).all()
    np.testing.assert_allclose(outs["s8"], outs["u8"], rtol=0, atol=1e-5 * np.abs(outs["u8"]).max())


def test_mlp_adapter_side_paths_move_into_the_chunks(tiny_official, tmp_path):
    """`--adapter-targets attention+mlp`: the side paths on gate/up/down run inside the MLP's Scan, same output."""
    out = {chunk: export_bundle(tiny_official, tmp_path / f"c{chunk}", layout="official", ops="standard",
                                graphs=["dit"], parity=False, adapter_targets="attention+mlp", mlp_chunk=chunk)
           for chunk in (0, 7)}
    sessions = {c: ort.InferenceSession(str(p / "dit.onnx"), providers=["CPUExecutionProvider"])
                for c, p in out.items()}
    assert any(i.name == "lora_a.mlp.gate_proj" for i in sessions[7].get_inputs())
    rng = np.random.default_rng(5)
    for frames in (15, 519):
        feeds = _feeds(sessions[0], frames, rng)  # random non-zero factors: the side paths add something
        assert rel_err(sessions[7].run(None, feeds)[0], sessions[0].run(None, feeds)[0]) < TOL, frames
