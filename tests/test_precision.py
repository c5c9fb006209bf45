"""Precision passes on tiny random graphs: per-graph error vs torch fp32 within budget, the rewritten ops,
lazy weights, and clear errors for bad --graph-precision values."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ir = pytest.importorskip("onnx_ir")

from acestep_edge.export import parity as parity_mod
from acestep_edge.export.graphs import graph_specs
from acestep_edge.export.onnx_export import export_program
from acestep_edge.export.precision import (
    apply_precision,
    budget_for,
    parse_graph_precision,
    plan,
)
from acestep_edge.export.quantize import nbits_quantize, per_channel_int8

pytestmark = pytest.mark.export  # torch, onnx and the export side


@pytest.fixture(scope="module")
def loaded(tiny_official):
    from acestep_edge.models.checkpoint import load_checkpoint

    return load_checkpoint(tiny_official, "official")


@pytest.fixture(scope="module")
def fp32_programs(loaded):
    """(spec, torch module, parity cases, torch refs, fp32 ONNX proto) for the graphs that change precision."""
    out = {}
    for name in ("text_encoder", "dit", "vae_decoder"):
        spec = graph_specs(loaded.preset)[name]
        module = spec.build(loaded)
        cases = parity_mod.parity_cases(spec, loaded.preset)
        inputs = parity_mod.case_inputs(spec, loaded.preset, cases)
        refs = parity_mod.torch_references(module, inputs)
        proto = ir.to_proto(export_program(spec, module, loaded.preset, "standard").model)
        out[name] = (spec, cases, inputs, refs, proto)
    return out


def _measure(fp32_programs, name, precision, tmp_path):
    spec, cases, inputs, refs, proto = fp32_programs[name]
    model = ir.from_proto(proto)
    record = apply_precision(name, precision, model)
    path = tmp_path / f"{name}_{precision}.onnx"
    ir.save(model, path)
    result = parity_mod.compare(spec, cases, refs, parity_mod.ort_outputs(path, spec, inputs))
    return result, record, ir.load(path), path


CASES = [("dit", "fp16"), ("dit", "int8"), ("dit", "int4"), ("text_encoder", "fp16"), ("text_encoder", "int8"),
         ("text_encoder", "int4"), ("vae_decoder", "fp16")]


@pytest.mark.parametrize("name,precision", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_graph_error_within_budget(fp32_programs, name, precision, tmp_path):
    """Each rewritten graph vs the fp32 torch module on fixed-seed inputs: within its budget, IO float32."""
    result, record, model, _ = _measure(fp32_programs, name, precision, tmp_path)
    err = result["max_rel_err"]
    print(f"{name} {precision}: max rel err {err:.3g}, rms rel err {result['rms_rel_err']:.3g}")
    assert err <= budget_for(name, precision), (name, precision, err)
    assert err > 1e-5, "the pass changed nothing measurable"  # a real rewrite happened
    assert record["rewritten_ops"] > 0
    for value in list(model.graph.inputs) + list(model.graph.outputs):
        if value.dtype not in (ir.DataType.INT64,):
            assert value.dtype == ir.DataType.FLOAT, (value.name, value.dtype)


def test_dit_ops_per_scheme(fp32_programs, tmp_path):
    """int8 (cpu) → DynamicQuantizeMatMul, int4 → MatMulNBits bits 4; only block linears; head and
    timestep/conditioning projections keep fp32."""
    for precision, op in (("int8", "DynamicQuantizeMatMul"), ("int4", "MatMulNBits")):
        _, record, model, _ = _measure(fp32_programs, "dit", precision, tmp_path)
        ops = [n.op_type for n in model.graph]
        assert ops.count(op) == record["rewritten_ops"] == 4 * 11  # 4 layers × (4 self + 4 cross + 3 MLP)
        assert "Gemm" in ops and "ConvTranspose" in ops  # timestep MLP and output head untouched
        assert ops.count("MatMul") >= 1  # the condition embedder (and attention's own matmuls) stay
        if op == "MatMulNBits":
            node = next(n for n in model.graph if n.op_type == op)
            assert node.attributes["bits"].as_int() == 4 and node.attributes["block_size"].as_int() == 128
            assert node.attributes["accuracy_level"].as_int() == 4


def test_fp16_keeps_fp32_islands(fp32_programs, tmp_path):
    """RMSNorm, softmax/attention and rotary run on fp32 tensors; the weights of matmuls are fp16."""
    _, _, model, _ = _measure(fp32_programs, "dit", "fp16", tmp_path)
    for node in model.graph:
        if node.op_type in ("RMSNormalization", "Attention", "Softmax", "RotaryEmbedding", "Sin", "Cos"):
            for v in node.inputs:
                if v is not None and v.dtype is not None and v.dtype.is_floating_point():
                    assert v.dtype == ir.DataType.FLOAT, (node.op_type, v.name, v.dtype)
    halves = [v for v in model.graph.initializers.values() if v.const_value.dtype == ir.DataType.FLOAT16]
    assert sum(v.const_value.nbytes for v in halves) > 0.9 * sum(
        v.const_value.nbytes for v in model.graph.initializers.values())


def test_quantisation_is_lazy_and_streams_from_lazy_sources(fp32_programs, tmp_path):
    """Like the XL path: every source weight is a LazyTensor; the pass reads none of them until save, and
    the saved graph equals the one quantised from in-memory weights."""
    spec, cases, inputs, refs, proto = fp32_programs["dit"]
    model = ir.from_proto(proto)
    reads = []
    for value in model.graph.initializers.values():
        src = value.const_value
        if src.dtype == ir.DataType.FLOAT and len(src.shape) == 2:
            def read(src=src, name=value.name):
                reads.append(name)
                return ir.tensor(src.numpy())
            value.const_value = ir.LazyTensor(read, dtype=src.dtype, shape=src.shape, name=value.name)
    apply_precision("dit", "int4", model)
    assert reads == [], "the pass materialised weights before save"
    lazy_path = tmp_path / "lazy.onnx"
    ir.save(model, lazy_path)
    assert len(reads) == len(set(reads)) > 0, "each weight is read exactly once"
    _, _, eager, eager_path = _measure(fp32_programs, "dit", "int4", tmp_path)
    a = parity_mod.ort_outputs(lazy_path, spec, inputs)
    b = parity_mod.ort_outputs(eager_path, spec, inputs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])


def test_per_channel_int8_roundtrip():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    for dtype in ("int8", "uint8"):
        q, scale, zero = per_channel_int8(w, weight_dtype=dtype)
        deq = (q.astype(np.float32) - (0 if zero is None else zero.astype(np.float32))) * scale
        assert np.abs(deq - w).max() <= scale.max() / 2 + 1e-6
        assert np.abs(w - deq).max(axis=0).max() <= (np.abs(w).max(axis=0) / 127 / 2 + 1e-6).max()


def test_nbits_packing_matches_reference_dequantisation():
    """Our use of ONNX Runtime's packer: unpacking the nibbles by hand gives back the weights ± half a step."""
    rng = np.random.default_rng(1)
    k, n, block = 64, 8, 32
    w = rng.standard_normal((k, n)).astype(np.float32)
    packed, scales, zero = nbits_quantize(w, 4, block, symmetric=False)
    low, high = packed & 0x0F, packed >> 4
    q = np.stack([low, high], axis=-1).reshape(n, k // block, block).astype(np.float32)
    zp = np.stack([zero & 0x0F, zero >> 4], axis=-1).reshape(n, -1)[:, : k // block].astype(np.float32)
    deq = (q - zp[..., None]) * scales.reshape(n, -1)[..., None]
    step = scales.reshape(n, -1)[..., None]
    assert np.all(np.abs(deq.reshape(n, k).T - w) <= step.repeat(block, -1).reshape(n, k).T * 0.5 + 1e-5)


# -- --graph-precision parsing and planning ------------------------------------------------------

BAD = [
    ("dit", "not GRAPH=PRECISION"),
    ("dit=", "not GRAPH=PRECISION"),
    ("unet=fp16", "unknown graph 'unet'"),
    ("dit=int3", "unknown precision 'int3'"),
    ("dit=fp16,dit=int8", "gives dit twice"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_bad_graph_precision_values(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_graph_precision(text)


@pytest.mark.parametrize("overrides,needle", [
    ({"condition_encoder": "fp16"}, "condition_encoder cannot be exported in fp16: its lyric encoder"),
    ({"vae_decoder": "int8"}, "vae_decoder cannot be exported in int8: it has no linear layers"),
    ({"audio_tokenizer": "int4"}, "audio_tokenizer cannot be exported in int4"),
])
def test_unsupported_graph_precisions(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        plan("int8", overrides)


def test_plan_defaults_and_overrides():
    p = plan("int8", parse_graph_precision("vae_decoder=fp16, text_encoder=int8"))
    assert p["dit"] == "int8" and p["vae_decoder"] == "fp16" and p["text_encoder"] == "int8"
    assert p["condition_encoder"] == "fp32"
    assert plan("fp16")["condition_encoder"] == "fp32" and plan("fp16")["dit"] == "fp16"
    with pytest.raises(ValueError, match="does not include"):
        plan("fp32", {"dit": "int8"}, graphs=("vae_decoder",))


def test_cli_rejects_bad_graph_precision(tiny_official, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "export", "--checkpoint", str(tiny_official),
                           "--out", str(tmp_path / "b"), "--precision", "int8",
                           "--graph-precision", "condition_encoder=fp16"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "--graph-precision" in proc.stderr and "condition_encoder cannot be exported in fp16" in proc.stderr
    assert not (tmp_path / "b").exists()
