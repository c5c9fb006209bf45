"""`--full-attention auto` per (target, precision): fused where the target has a flash kernel (CUDA, fp16),
the chunked Scan elsewhere; the manifest's record matches what the graph contains."""

from __future__ import annotations

import itertools
import json

import pytest

from acestep_edge.kernels.lowering import flash_target, full_attention_form, use_lowering

pytestmark = pytest.mark.export  # torch, onnx and the export side

PAIRS = list(itertools.product(("cpu", "gpu"), ("fp32", "fp16", "int8", "int4")))


def _expected(target: str, precision: str) -> str:
    return "fused" if (target, precision) == ("gpu", "fp16") else "chunked"


@pytest.mark.parametrize("target, precision", PAIRS)
def test_auto_form_per_target_and_precision(target, precision):
    with use_lowering("standard", flash=flash_target(target, precision)):
        assert full_attention_form("standard", masked=False, causal=False) == _expected(target, precision)
        # Flash needs an unmasked call: a masked or causal one keeps the CPU rule (standard → chunked).
        assert full_attention_form("standard", masked=True, causal=False) == "chunked"
        assert full_attention_form("standard", masked=False, causal=True) == "chunked"
    with use_lowering("standard", full_attention="chunked", flash=flash_target(target, precision)):
        assert full_attention_form("standard", masked=False, causal=False) == "chunked"  # explicit wins


# Exports cost ~20 s CPU each: the flash pair, its CPU twin, and the GPU pairs whose activations stay fp32.
EXPORTED = [("gpu", "fp16"), ("cpu", "fp16"), ("gpu", "int8"), ("gpu", "fp32")]


@pytest.mark.parametrize("target, precision", EXPORTED, ids=[f"{t}-{p}" for t, p in EXPORTED])
def test_exported_dit_records_the_lowering_it_has(tiny_official, tmp_path, target, precision):
    import onnx

    from acestep_edge.export.bundle import export_bundle

    parity = (target, precision) == ("gpu", "fp16")  # the new graph: fp16 Attention, within the fp16 budget
    out = export_bundle(tiny_official, tmp_path / "b", layout="official", ops="standard", precision=precision,
                        target=target, graphs=["dit"], parity=parity)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["graphs"]["dit"]
    want = _expected(target, precision)
    assert entry["attention"]["full"] == want and entry["attention"]["requested"] == "auto"
    assert entry["attention"]["query_block"] == (64 if want == "chunked" else None)
    proto = onnx.load(str(out / "dit.onnx"), load_external_data=False)
    types = [n.op_type for n in proto.graph.node]
    # The record matches the graph: a Scan for the chunked form, the opset-23 Attention op for the fused one.
    assert ("Scan" in types, "Attention" in types) == (want == "chunked", want == "fused"), sorted(set(types))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["acestep.full_attention_forms"] == want and meta["acestep.full_attention"] == "auto"
    if want == "fused":  # Flash takes fp16 only: q, k, v reach every Attention node through a Cast to fp16
        producers = {o: n for n in proto.graph.node for o in n.output}
        for node in (n for n in proto.graph.node if n.op_type == "Attention"):
            for name in node.input[:3]:
                cast = producers[name]
                assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT16, node.name
        assert entry["quantization"]["provider"] == "cuda"
    if parity:
        assert entry["parity"]["max_rel_err"] <= entry["budget"]["max_rel_err"], entry["parity"]
    if target == "gpu":
        assert "--target gpu" in manifest["export"]["command"]
