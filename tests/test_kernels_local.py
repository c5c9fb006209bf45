"""Chunked sliding-window attention (a Scan with one query block per step) vs the blocked lowering and numpy.

One graph per form holds bidirectional ±window self-attention, the causal band and the band with
padded keys (GQA 4/2 heads × 8, window 5 so the block is 5 and the halo one block), exported at
L = 17 with L and B dynamic, then run at L ∈ {1, 4, 5, 6, 11, 333} (one row, under one block, one
block, one block + 1, a partial third block, many blocks) for batch 1 and 2. A window that is not a
multiple of the block is covered through `band` (the static mask both forms build).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from acestep_edge.kernels.attention import attention, attention_ref, band_mask_ref  # noqa: E402
from acestep_edge.kernels.attention_local_onnxscript import band  # noqa: E402
from acestep_edge.kernels.lowering import sliding_attention_form, translation_table, use_lowering  # noqa: E402

pytestmark = pytest.mark.export  # torch, onnx and the export side

HQ, HKV, D, WINDOW = 4, 2, 8, 5
LENGTHS = (1, 4, 5, 6, 11, 333)
NAMES = ("q", "k", "v", "valid")
OUTPUTS = ("band", "causal", "masked")
TOL = 1e-5  # relative to the largest |value|: fp32 rounding, far below any band or block error


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


class SlidingAttentions(torch.nn.Module):
    def forward(self, q, k, v, valid):
        return (attention(q, k, v, window=WINDOW), attention(q, k, v, window=WINDOW, causal=True),
                attention(q, k, v, window=WINDOW, key_padding_mask=valid))


def make_inputs(rng, batch: int, length: int) -> dict:
    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    valid = np.ones((batch, length), bool)
    valid[0, 1::3] = False  # batch 0 has padded keys (key 0 stays valid, so no row is empty)
    return {"q": randn(batch, HQ, length, D), "k": randn(batch, HKV, length, D), "v": randn(batch, HKV, length, D),
            "valid": valid}


def export(form: str, path) -> str:
    batch, length = torch.export.Dim("batch", max=100_000), torch.export.Dim("length", max=100_000)
    f = make_inputs(np.random.default_rng(0), 2, 17)
    axes = {0: batch, 2: length}
    with use_lowering("standard", sliding_attention=form) as used:
        program = torch.onnx.export(SlidingAttentions(), tuple(torch.from_numpy(f[n]) for n in NAMES), dynamo=True,
                                    opset_version=23, dynamic_shapes=(axes, axes, axes, {0: batch, 1: length}),
                                    input_names=list(NAMES), output_names=list(OUTPUTS),
                                    custom_translation_table=translation_table("standard"), verbose=False)
    assert used["sliding"] == {form}
    program.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    return {form: export(form, tmp / f"{form}.onnx") for form in ("chunked", "blocked")}


def test_chunked_graph_scans_and_blocked_does_not(graphs):
    ops = {form: [n.op_type for n in onnx.load(path).graph.node] for form, path in graphs.items()}
    assert ops["chunked"].count("Scan") == 3  # one per attention call
    assert "Scan" not in ops["blocked"]


@pytest.mark.parametrize("batch", [1, 2])
def test_chunked_matches_blocked_and_numpy(graphs, batch):
    sessions = {form: ort.InferenceSession(path, providers=["CPUExecutionProvider"]) for form, path in graphs.items()}
    rng = np.random.default_rng(batch)
    for length in LENGTHS:
        f = make_inputs(rng, batch, length)
        got = {form: dict(zip(OUTPUTS, s.run(None, f))) for form, s in sessions.items()}
        ref = {"band": attention_ref(f["q"], f["k"], f["v"], window=WINDOW),
               "causal": attention_ref(f["q"], f["k"], f["v"], window=WINDOW, causal=True),
               "masked": attention_ref(f["q"], f["k"], f["v"], window=WINDOW, key_padding_mask=f["valid"])}
        for name in OUTPUTS:
            assert got["chunked"][name].shape == (batch, HQ, length, D)
            assert rel_err(got["chunked"][name], ref[name]) < TOL, (length, name)
            assert rel_err(got["chunked"][name], got["blocked"][name]) < TOL, (length, name)


@pytest.mark.parametrize("window,block,causal", [(5, 5, False), (7, 3, False), (7, 3, True), (0, 1, False)])
def test_band_is_the_reference_band_seen_from_each_block(window, block, causal):
    halo = -(-window // block)
    length = 5 * block
    full = band_mask_ref(length, length, window, causal)
    got = band(block, halo, window, 2, causal)
    assert got.shape == (2 * block, (2 * halo + 1) * block)
    for n in range(5):  # block n's rows against keys n·block − halo·block + c (out-of-range keys: masked anyway)
        for c in range(got.shape[1]):
            j = n * block - halo * block + c
            if 0 <= j < length:
                rows = full[n * block:(n + 1) * block, j]
                assert (got[:block, c] == rows).all() and (got[block:, c] == rows).all()


def test_auto_picks_chunked_except_for_plain():
    for mode, want in (("standard", "chunked"), ("ort", "chunked"), ("plain", "blocked")):
        with use_lowering(mode):
            assert sliding_attention_form(mode) == want
    with use_lowering("standard", sliding_attention="blocked"):
        assert sliding_attention_form("standard") == "blocked"
    with pytest.raises(ValueError, match="sliding-attention"):
        with use_lowering("standard", sliding_attention="banded"):
            pass
