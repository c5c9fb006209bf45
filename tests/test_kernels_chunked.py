"""Chunked full attention (a Scan over query blocks): vs the fused lowering, torch and numpy, exported once.

One graph per lowering holds full self-attention, causal self-attention and masked cross-attention
(GQA 4/2 heads × 8), exported at T = 9 with T, S and B dynamic, then run at T ∈ {1, 127, 128,
129, 2001} (default block 64: one row, two blocks − 1, two blocks, two blocks + 1, many blocks)
for batch 1 and 2, and at T = 15000 in a subprocess whose address space is capped below one
[B, H, T, T] fp32 tensor.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from acestep_edge.kernels.attention import attention, attention_ref  # noqa: E402
from acestep_edge.kernels.lowering import (  # noqa: E402
    DEFAULT_QUERY_BLOCK, full_attention_form, translation_table, use_lowering)

pytestmark = pytest.mark.export  # torch, onnx and the export side

HQ, HKV, D, CROSS = 4, 2, 8, 77
BLOCK = DEFAULT_QUERY_BLOCK  # what the export ships (64)
LENGTHS = (1, 127, 128, 129, 2001)
LONG = 15000
NAMES = ("q", "k", "v", "kc", "vc", "kc_valid")
OUTPUTS = ("full", "causal", "cross_masked")
TOL = 1e-5  # relative to the largest |value|: fp32 rounding, well below any masking or block error


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


class FullAttentions(torch.nn.Module):
    def forward(self, q, k, v, kc, vc, kc_valid):
        return (attention(q, k, v), attention(q, k, v, causal=True),
                attention(q, kc, vc, key_padding_mask=kc_valid))


def make_inputs(rng, batch: int, length: int, cross: int = CROSS) -> dict:
    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    valid = np.ones((batch, cross), bool)
    valid[0, cross // 3:] = False  # batch 0 has padded keys (key 0 stays valid)
    return {"q": randn(batch, HQ, length, D), "k": randn(batch, HKV, length, D), "v": randn(batch, HKV, length, D),
            "kc": randn(batch, HKV, cross, D), "vc": randn(batch, HKV, cross, D), "kc_valid": valid}


def references(f: dict) -> dict:
    return {"full": attention_ref(f["q"], f["k"], f["v"]),
            "causal": attention_ref(f["q"], f["k"], f["v"], causal=True),
            "cross_masked": attention_ref(f["q"], f["kc"], f["vc"], key_padding_mask=f["kc_valid"])}


def export(form: str, path) -> str:
    batch, length, cross = (torch.export.Dim(n, max=100_000) for n in ("batch", "length", "cross"))
    f = make_inputs(np.random.default_rng(0), 2, 9, 5)
    self_axes, cross_axes = {0: batch, 2: length}, {0: batch, 2: cross}
    dynamic = (self_axes, self_axes, self_axes, cross_axes, cross_axes, {0: batch, 1: cross})
    with use_lowering("standard", full_attention=form, query_block=BLOCK):
        program = torch.onnx.export(FullAttentions(), tuple(torch.from_numpy(f[n]) for n in NAMES), dynamo=True,
                                    opset_version=23, dynamic_shapes=dynamic, input_names=list(NAMES),
                                    output_names=list(OUTPUTS), custom_translation_table=translation_table("standard"),
                                    verbose=False)
    program.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chunked")
    return {form: export(form, tmp / f"{form}.onnx") for form in ("chunked", "fused")}


def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_chunked_graph_has_one_scan_per_attention_and_no_fused_op(graphs):
    onnx.checker.check_model(graphs["chunked"], full_check=True)
    model = onnx.load(graphs["chunked"])
    types = [n.op_type for n in model.graph.node]
    assert types.count("Scan") == 3
    assert not {"Attention", "MultiHeadAttention"} & set(types)
    assert "Attention" in {n.op_type for n in onnx.load(graphs["fused"]).graph.node}
    for node in model.graph.node:  # the body is the whole attention of a block
        if node.op_type == "Scan":
            (graph,) = [a.g for a in node.attribute if a.name == "body"]
            body = {n.op_type for n in graph.node}
            assert {"Slice", "MatMul", "Softmax"} <= body


@pytest.mark.parametrize("batch", [1, 2])
def test_chunked_matches_fused_and_numpy(graphs, batch):
    chunked, fused = _session(graphs["chunked"]), _session(graphs["fused"])
    rng = np.random.default_rng(batch)
    for length in LENGTHS:
        f = make_inputs(rng, batch, length)
        got = dict(zip(OUTPUTS, chunked.run(list(OUTPUTS), f)))
        old = dict(zip(OUTPUTS, fused.run(list(OUTPUTS), f)))
        ref = references(f)
        for name in OUTPUTS:
            assert got[name].shape == ref[name].shape, (name, length)
            assert rel_err(got[name], old[name]) <= TOL, (name, batch, length, "vs fused")
            assert rel_err(got[name], ref[name]) <= TOL, (name, batch, length, "vs numpy")


def test_chunked_fp16_keeps_the_softmax_in_fp32(tmp_path):
    # An fp16 graph: the body casts the scores to fp32 for the softmax and back before P·V.
    model = FullAttentions()
    f = make_inputs(np.random.default_rng(5), 2, 9, 5)
    f16 = {n: (a.astype(np.float16) if a.dtype == np.float32 else a) for n, a in f.items()}
    batch, length, cross = (torch.export.Dim(n, max=100_000) for n in ("batch", "length", "cross"))
    self_axes, cross_axes = {0: batch, 2: length}, {0: batch, 2: cross}
    dynamic = (self_axes, self_axes, self_axes, cross_axes, cross_axes, {0: batch, 1: cross})
    with use_lowering("standard", full_attention="chunked", query_block=4):
        program = torch.onnx.export(model, tuple(torch.from_numpy(f16[n]) for n in NAMES), dynamo=True,
                                    opset_version=23, dynamic_shapes=dynamic, input_names=list(NAMES),
                                    output_names=list(OUTPUTS), custom_translation_table=translation_table("standard"),
                                    verbose=False)
    program.save(str(tmp_path / "fp16.onnx"))
    session = _session(str(tmp_path / "fp16.onnx"))
    for length in (1, 4, 30):
        g = {n: (a.astype(np.float16) if a.dtype == np.float32 else a)
             for n, a in make_inputs(np.random.default_rng(length), 2, length).items()}
        ref = references({n: a.astype(np.float32) if a.dtype == np.float16 else a for n, a in g.items()})
        for name, got in zip(OUTPUTS, session.run(list(OUTPUTS), g)):
            assert got.dtype == np.float16
            assert rel_err(got, ref[name]) <= 5e-3, (name, length)  # fp16 rounding of inputs and outputs


_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np, onnxruntime as ort
    path, inputs, out, cap = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    feeds = dict(np.load(inputs))
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    np.savez(out, *sess.run(None, feeds))
""")


def _run_capped(path, feeds: dict, tmp_path, cap_bytes: int):
    np.savez(tmp_path / "in.npz", **feeds)
    out = tmp_path / "out.npz"
    proc = subprocess.run([sys.executable, "-c", _CHILD, path, str(tmp_path / "in.npz"), str(out), str(cap_bytes)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1:]
    with np.load(out) as data:
        return [data[f"arr_{i}"] for i in range(len(OUTPUTS))], None


def test_chunked_at_15000_tokens_within_a_memory_cap(graphs, tmp_path):
    batch = 2
    scores_bytes = batch * HQ * LONG * LONG * 4  # 7.2 GB: one fp32 score tensor of the fused lowering
    cap = 2 * 2**30
    assert cap < scores_bytes / 3
    f = make_inputs(np.random.default_rng(7), batch, LONG)
    outs, err = _run_capped(graphs["chunked"], f, tmp_path, cap)
    assert err is None, err
    got = dict(zip(OUTPUTS, outs))
    # The cap is what bounds the chunked run: the fused graph cannot run under it.
    _, fused_err = _run_capped(graphs["fused"], f, tmp_path, cap)
    assert fused_err is not None

    # torch SDPA (its CPU flash kernel keeps memory O(T)); K/V repeated for GQA.
    q, k, v = (torch.from_numpy(f[n]) for n in ("q", "k", "v"))
    k, v = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        assert rel_err(got["full"], sdpa(q, k, v).numpy()) <= TOL
        assert rel_err(got["causal"], sdpa(q, k, v, is_causal=True).numpy()) <= TOL
    cross = attention_ref(f["q"], f["kc"], f["vc"], key_padding_mask=f["kc_valid"])
    assert rel_err(got["cross_masked"], cross) <= TOL

    # numpy float64 on sampled rows: each query row is independent (causal row i sees keys 0..i).
    rows = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 7777, LONG - BLOCK, LONG - 1]
    full = attention_ref(f["q"][:, :, rows], f["k"], f["v"])
    assert rel_err(got["full"][:, :, rows], full) <= TOL
    for i in rows:
        causal = attention_ref(f["q"][:, :, [i]], f["k"][:, :, :i + 1], f["v"][:, :, :i + 1])
        assert rel_err(got["causal"][:, :, [i]], causal) <= TOL, i


def test_auto_picks_chunked_where_the_cpu_kernel_builds_scores():
    with use_lowering("standard"):
        assert full_attention_form("standard", masked=False, causal=False) == "chunked"
    with use_lowering("ort"):
        assert full_attention_form("ort", masked=False, causal=False) == "fused"  # MHA's CPU flash path
        assert full_attention_form("ort", masked=True, causal=False) == "chunked"
        assert full_attention_form("ort", masked=False, causal=True) == "chunked"
    with use_lowering("plain"):
        assert full_attention_form("plain", masked=False, causal=False) == "fused"
    with use_lowering("plain", full_attention="chunked"):
        assert full_attention_form("plain", masked=False, causal=False) == "chunked"
    with use_lowering("standard", full_attention="fused"):
        assert full_attention_form("standard", masked=True, causal=True) == "fused"


@pytest.mark.parametrize("args, message", [
    (["--full-attention", "flash"], "'flash' is not one of"),
    (["--full-attention", "fused", "--query-block", "64"], "never uses"),
    (["--ops", "plain", "--query-block", "64"], "never uses"),
    (["--query-block", "0"], "x>=1"),
])
def test_export_cli_refuses_bad_attention_options(tmp_path, args, message):
    from acestep_edge.cli import main

    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "b"), *args])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert not (tmp_path / "b").exists()
