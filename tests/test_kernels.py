"""Kernels: numpy reference vs torch eager vs ONNX Runtime, for each export lowering mode."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from acestep_edge.kernels.attention import attention, attention_ref  # noqa: E402
from acestep_edge.kernels.attention_onnx import blocked_local_attention  # noqa: E402
from acestep_edge.kernels.lowering import MODES, current_mode, translation_table, use_lowering  # noqa: E402
from acestep_edge.kernels.rmsnorm import rms_norm, rms_norm_ref  # noqa: E402
from acestep_edge.kernels.rotary import apply_rotary, apply_rotary_ref, rotary_cos_sin  # noqa: E402

pytestmark = pytest.mark.export  # torch, onnx and the export side

HQ, HKV, D, WINDOW, EPS, THETA = 4, 2, 8, 4, 1e-6, 10000.0
LENGTHS = (1, 3, 4, 9, 17, 40)  # 1, < window, = window, odd / not a multiple of the block, several windows
CROSS_LENGTHS = (1, 7, 12)
OUTPUTS = ("full", "window", "causal", "cross", "cross_masked", "rms_norm", "rotary")


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


class AllKernels(torch.nn.Module):
    """Every hot op once, so one export per mode covers them all."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, D))

    def forward(self, q, k, v, kc, vc, kc_valid):
        cos, sin = rotary_cos_sin(torch.arange(q.shape[2]), D, THETA)
        return (
            attention(q, k, v),
            attention(q, k, v, window=WINDOW),
            attention(q, k, v, causal=True),
            attention(q, kc, vc),
            attention(q, kc, vc, key_padding_mask=kc_valid),
            rms_norm(q, self.weight, EPS),
            apply_rotary(q, cos, sin),
        )


def make_inputs(rng, batch: int, length: int, cross: int) -> dict:
    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    valid = np.ones((batch, cross), bool)
    valid[0, cross // 2 + 1:] = False  # some padded keys; key 0 always valid
    return {"q": randn(batch, HQ, length, D), "k": randn(batch, HKV, length, D), "v": randn(batch, HKV, length, D),
            "kc": randn(batch, HKV, cross, D), "vc": randn(batch, HKV, cross, D), "kc_valid": valid}


def references(model: AllKernels, f: dict) -> dict:
    q, k, v, kc, vc = f["q"], f["k"], f["v"], f["kc"], f["vc"]
    w = model.weight.detach().numpy()
    pos = np.arange(q.shape[2])
    return {
        "full": attention_ref(q, k, v),
        "window": attention_ref(q, k, v, window=WINDOW),
        "causal": attention_ref(q, k, v, causal=True),
        "cross": attention_ref(q, kc, vc),
        "cross_masked": attention_ref(q, kc, vc, key_padding_mask=f["kc_valid"]),
        "rms_norm": rms_norm_ref(q.astype(np.float64), w, EPS),
        "rotary": apply_rotary_ref(q.astype(np.float64), pos, THETA),
    }


def torch_outputs(model, f: dict) -> dict:
    with torch.no_grad():
        outs = model(*(torch.from_numpy(f[n]) for n in ("q", "k", "v", "kc", "vc", "kc_valid")))
    return {name: o.numpy() for name, o in zip(OUTPUTS, outs)}


# (ops mode, full-attention form): every mode's fused ops, and the chunked Scan (block 4, so the
# lengths above fall on, inside and across block boundaries).
LOWERINGS = tuple((mode, "fused") for mode in MODES) + (("standard", "chunked"),)


def export_session(lowering: tuple[str, str], model: AllKernels, tmp_path) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    mode, form = lowering
    batch, length, cross = torch.export.Dim("batch", max=64), torch.export.Dim("length", max=100_000), \
        torch.export.Dim("cross", max=100_000)
    f = make_inputs(np.random.default_rng(0), 2, 9, 5)
    args = tuple(torch.from_numpy(f[n]) for n in ("q", "k", "v", "kc", "vc", "kc_valid"))
    self_axes, cross_axes = {0: batch, 2: length}, {0: batch, 2: cross}
    dynamic = (self_axes, self_axes, self_axes, cross_axes, cross_axes, {0: batch, 1: cross})
    with use_lowering(mode, full_attention=form, query_block=4):
        program = torch.onnx.export(model, args, dynamo=True, opset_version=23, dynamic_shapes=dynamic,
                                    input_names=["q", "k", "v", "kc", "vc", "kc_valid"], output_names=list(OUTPUTS),
                                    custom_translation_table=translation_table(mode), verbose=False)
    path = tmp_path / f"kernels_{mode}_{form}.onnx"
    program.save(str(path))
    proto = onnx.load(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), proto


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AllKernels().eval()


@pytest.fixture(scope="module", params=LOWERINGS, ids=lambda p: "-".join(p))
def exported(request, model, tmp_path_factory):
    session, proto = export_session(request.param, model, tmp_path_factory.mktemp("-".join(request.param)))
    return request.param, session, proto


# ---- torch eager vs numpy ----


def test_eager_matches_numpy_and_is_unchanged_outside_lowering(model):
    assert current_mode() is None
    f = make_inputs(np.random.default_rng(1), 2, 11, 6)
    got, ref = torch_outputs(model, f), references(model, f)
    for name in OUTPUTS:
        assert rel_err(got[name], ref[name]) <= 1e-5, name


@pytest.mark.parametrize("lowering", LOWERINGS, ids=lambda p: "-".join(p))
def test_lowered_torch_matches_numpy(model, lowering):
    # Under a lowering the torch code is what gets traced; run it eagerly (custom ops call their eager body).
    mode, form = lowering
    f = make_inputs(np.random.default_rng(2), 2, 13, 7)
    with use_lowering(mode, full_attention=form):
        got = torch_outputs(model, f)
    ref = references(model, f)
    for name in OUTPUTS:
        assert rel_err(got[name], ref[name]) <= 1e-5, (mode, name)


def test_use_lowering_validates_and_restores():
    with pytest.raises(ValueError, match="unknown lowering mode"):
        with use_lowering("tensorrt"):
            pass
    with use_lowering("plain"):
        with use_lowering("ort"):
            assert current_mode() == "ort"
        assert current_mode() == "plain"
    assert current_mode() is None
    with pytest.raises(ValueError, match="full-attention"):
        with use_lowering("standard", full_attention="flash"):
            pass
    with pytest.raises(ValueError, match="query block"):
        with use_lowering("standard", query_block=0):
            pass
    with pytest.raises(ValueError, match="opset"):
        translation_table("standard", opset=18)


# ---- blocked local attention vs the banded reference ----


@pytest.mark.parametrize("length", [1, 5, 127, 128, 129, 300, 777, 2001])
def test_blocked_local_attention_matches_banded_reference(length):
    rng = np.random.default_rng(length)
    q = rng.standard_normal((1, 4, length, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, length, 16)).astype(np.float32) for _ in range(2))
    got = blocked_local_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), 128)
    assert rel_err(got.numpy(), attention_ref(q, k, v, window=128)) <= 1e-5


@pytest.mark.parametrize("block", [1, 3, 5, 16])
@pytest.mark.parametrize("causal", [False, True])
def test_blocked_local_attention_block_sizes_masks(block, causal):
    rng = np.random.default_rng(block)
    length, window = 37, 5
    q = rng.standard_normal((2, 4, length, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 1, length, 8)).astype(np.float32) for _ in range(2))
    valid = rng.random((2, length)) > 0.3
    valid[:, ::4] = True  # every query keeps a key in its band
    got = blocked_local_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), window, block=block,
                                  scale=0.3, causal=causal, key_padding_mask=torch.from_numpy(valid))
    ref = attention_ref(q, k, v, window=window, causal=causal, key_padding_mask=valid, scale=0.3)
    assert rel_err(got.numpy(), ref) <= 1e-5


def test_blocked_local_attention_rejects_bad_arguments():
    q = torch.zeros(1, 3, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        blocked_local_attention(q, torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), 2)
    with pytest.raises(ValueError, match="self-attention"):
        blocked_local_attention(q, torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8), 2)
    with pytest.raises(ValueError, match="window"):
        blocked_local_attention(q, torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8), -1)


# ---- ONNX Runtime vs numpy, per mode, at lengths other than the export's ----


@pytest.mark.parametrize("batch", [1, 2])
def test_onnxruntime_matches_numpy(exported, model, batch):
    mode, session, _ = exported
    rng = np.random.default_rng(3)
    for length in LENGTHS:
        for cross in CROSS_LENGTHS:
            f = make_inputs(rng, batch, length, cross)
            got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), f)))
            ref = references(model, f)
            for name in OUTPUTS:
                assert rel_err(got[name], ref[name]) <= 1e-4, (mode, name, batch, length, cross)


EXPECTED_FUSED = {
    ("standard", "fused"): {("", "Attention"), ("", "RMSNormalization"), ("", "RotaryEmbedding")},
    ("ort", "fused"): {("com.microsoft", "MultiHeadAttention"), ("", "SimplifiedLayerNormalization"),
                       ("com.microsoft", "RotaryEmbedding")},
    ("plain", "fused"): set(),
    ("standard", "chunked"): {("", "Scan"), ("", "RMSNormalization"), ("", "RotaryEmbedding")},
}
FUSED_NAMES = {"Attention", "RMSNormalization", "RotaryEmbedding", "MultiHeadAttention", "GroupQueryAttention",
               "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "LayerNormalization"}


def test_emitted_ops(exported):
    lowering, _, proto = exported
    mode, form = lowering
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert EXPECTED_FUSED[lowering] <= ops
    if form == "chunked":  # every full/cross attention went through the Scan: no fused attention op left
        assert not {t for _, t in ops} & {"Attention", "MultiHeadAttention", "GroupQueryAttention"}
        # full, causal, cross, cross_masked, and the ±window call (chunked sliding attention, the auto default)
        assert sum(n.op_type == "Scan" for n in proto.graph.node) == 5
    if mode == "plain":
        assert not {d for d, _ in ops} - {""}, "plain mode must stay in the ONNX domain"
        assert not {t for _, t in ops} & FUSED_NAMES
    assert not any(n.domain == "acestep" for n in proto.graph.node)
