"""int8 weight forms (torch-free): the s8 ↔ u8 rewrite at session creation gives the same outputs, and the
form chosen follows the CPU's flags. Models are written at the protobuf wire level (no onnx package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from acestep_edge.runtime import cpu_features
from acestep_edge.runtime.cpu_features import cpu_flags, int8_weight_form
from acestep_edge.runtime.int8_form import INT8, UINT8, Tensor, _encode_tensor, _ld, _vi, staged_model, stored_form

K, N = 96, 48
VNNI = bool(set(cpu_features.VNNI_FLAGS) & (cpu_flags() or set()))


def _value_info(name: str, dtype: int, dims) -> bytes:
    shape = b"".join(_ld(1, _ld(2, d.encode()) if isinstance(d, str) else _vi(1, d)) for d in dims)
    return _ld(1, name.encode()) + _ld(2, _ld(1, _vi(1, dtype) + _ld(2, shape)))


def write_model(folder: Path, form: str, layers: int = 2, external: bool = False, full_range: bool = True,
                seed: int = 0, dequantized: list | None = None) -> Path:
    """x [B, K] → `layers` DynamicQuantizeMatMul (+ Relu) with per-channel weights in `form` (u8 with
    zero point 128, or s8 without one); weights in dit.onnx.data when `external`."""
    rng = np.random.default_rng(seed)
    qmax = 127 if full_range else 63
    nodes, inits, infos, data, prev = [], [], [], bytearray(), "x"
    for i in range(layers):
        k = K if i == 0 else N
        q = rng.integers(-qmax, qmax + 1, size=(k, N)).astype(np.int16)
        scale = (rng.random(N) * 0.02 + 0.005).astype(np.float32)
        if dequantized is not None:
            dequantized.append(q.astype(np.float32) * scale)
        names = [prev, f"w{i}", f"w{i}_scale"]
        weight = (q + 128).astype(np.uint8).tobytes() if form == "u8" else q.astype(np.int8).tobytes()
        dtype = UINT8 if form == "u8" else INT8
        tensors = [(f"w{i}", dtype, [k, N], weight), (f"w{i}_scale", 1, [N], scale.tobytes())]
        if form == "u8":
            names.append(f"w{i}_zp")
            tensors.append((f"w{i}_zp", UINT8, [N], np.full(N, 128, np.uint8).tobytes()))
        for name, dt, dims, raw in tensors:
            if external and len(raw) > 64:
                data += b"\0" * (-len(data) % 4096)
                ext = {"location": "dit.onnx.data", "offset": str(len(data)), "length": str(len(raw))}
                data += raw
                inits.append(Tensor(name, dt, dims, None, ext))
            else:
                inits.append(Tensor(name, dt, dims, raw, None))
            infos.append(_value_info(name, dt, dims))
        node = b"".join(_ld(1, n.encode()) for n in names) + _ld(2, f"h{i}".encode()) + \
            _ld(4, b"DynamicQuantizeMatMul") + _ld(7, b"com.microsoft")
        relu = _ld(1, f"h{i}".encode()) + _ld(2, f"r{i}".encode()) + _ld(4, b"Relu")
        nodes += [_ld(1, node), _ld(1, relu)]
        prev = f"r{i}"
    graph = b"".join(nodes) + _ld(2, b"g") + b"".join(_ld(5, _encode_tensor(t)) for t in inits) + \
        _ld(11, _value_info("x", 1, ["B", K])) + _ld(12, _value_info(prev, 1, ["B", N])) + \
        b"".join(_ld(13, v) for v in infos)
    model = _vi(1, 8) + _ld(8, _ld(1, b"") + _vi(2, 17)) + _ld(8, _ld(1, b"com.microsoft") + _vi(2, 1)) + _ld(7, graph)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dit.onnx").write_bytes(model)
    if external:
        (folder / "dit.onnx.data").write_bytes(bytes(data))
    return folder / "dit.onnx"


def run_as(path: Path, target: str, x: np.ndarray) -> np.ndarray:
    staged, rewrite, cleanup = staged_model(path, target)
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        session = ort.InferenceSession(str(staged), so, providers=["CPUExecutionProvider"])
    finally:
        cleanup()
    assert rewrite.target == target and rewrite.ops == 2
    assert not list(path.parent.glob(".int8-form-*")), "the staging folder outlives the session"
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("stored", ["u8", "s8"])
@pytest.mark.parametrize("external", [False, True])
def test_forms_give_identical_outputs(tmp_path, stored, external):
    """Both directions, inline and external weights: bit-identical outputs. Full-range weights where the CPU
    has VNNI (both kernels exact); without it the AVX2 u8 x s8 kernel saturates 16-bit pair sums, so
    there the weights stay within ±63 (reduce range), where both kernels are exact too."""
    weights = []
    path = write_model(tmp_path / "m", stored, external=external, full_range=VNNI, dequantized=weights)
    assert stored_form(path.read_bytes()) == (stored, 2)
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32) * 4
    outs = {form: run_as(path, form, x) for form in ("u8", "s8")}
    assert np.abs(outs["u8"]).max() > 0
    np.testing.assert_array_equal(outs["u8"], outs["s8"])
    ref = x  # float matmuls with the dequantised weights: off only by the activations' 8-bit rounding
    for w in weights:
        ref = np.maximum(ref @ w, 0)
    assert np.abs(outs["s8"] - ref).max() / np.abs(ref).max() < 0.03


def test_rewritten_types_and_zero_points(tmp_path):
    """u8 → s8 drops the all-128 zero points (the kernel's symmetric path); s8 → u8 adds them back."""
    path = write_model(tmp_path / "m", "u8", external=True)
    staged, rewrite, cleanup = staged_model(path, "s8")
    try:
        assert (rewrite.stored, rewrite.target) == ("u8", "s8") and staged.parent != path.parent
        data = staged.read_bytes()
        assert stored_form(data) == ("s8", 2) and b"w0_zp" not in data
        session = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["x"]
    finally:
        cleanup()
    assert not staged.exists()
    assert staged_model(path, "u8")[0] == path  # already the stored form: loaded as is


def test_data_outside_the_graph_folder_is_refused(tmp_path):
    """Staging must not let a graph reach a data file ONNX Runtime itself would refuse (outside its folder)."""
    path = write_model(tmp_path / "m", "u8", external=True)
    (tmp_path / "m" / "dit.onnx.data").rename(tmp_path / "elsewh.dat")
    outside = b"../elsewh.dat"  # as long as "dit.onnx.data": the protobuf lengths stay valid
    path.write_bytes(path.read_bytes().replace(b"dit.onnx.data", outside))
    with pytest.raises(ValueError, match="not a file beside the graph"):
        staged_model(path, "s8")
    assert not list((tmp_path / "m").glob(".int8-form-*"))


def test_no_int8_graph_is_left_alone(tmp_path):
    graph = _ld(1, _ld(1, b"x") + _ld(2, b"y") + _ld(4, b"Relu")) + _ld(11, _value_info("x", 1, [2])) + \
        _ld(12, _value_info("y", 1, [2]))
    path = tmp_path / "relu.onnx"
    path.write_bytes(_vi(1, 8) + _ld(8, _ld(1, b"") + _vi(2, 17)) + _ld(7, graph))
    assert stored_form(path.read_bytes()) == (None, 0)
    assert staged_model(path, "s8")[0] == path


@pytest.mark.parametrize("flags, want", [
    ({"avx2", "fma", "avx512f", "avx512_vnni"}, "s8"),
    ({"avx2", "fma", "avx_vnni"}, "s8"),
    ({"avx2", "fma", "amx_int8", "amx_tile"}, "s8"),
    ({"avx2", "fma"}, "u8"),
    ({"avx2", "fma", "avx512f", "avx512bw"}, "u8"),
])
def test_form_follows_flags(flags, want, monkeypatch):
    monkeypatch.delenv(cpu_features.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
    for stored in ("u8", "s8"):
        form, why = int8_weight_form(stored, frozenset(flags))
        assert form == want and why


def test_override_and_unknown_cpu(monkeypatch):
    vnni = frozenset({"avx2", "avx512_vnni"})
    monkeypatch.setenv(cpu_features.OVERRIDE_ENV, "u8")
    assert int8_weight_form("s8", vnni)[0] == "u8"
    monkeypatch.setenv(cpu_features.OVERRIDE_ENV, "stored")
    assert int8_weight_form("s8", frozenset({"avx2"}))[0] == "s8"
    monkeypatch.setenv(cpu_features.OVERRIDE_ENV, "fast")
    with pytest.raises(ValueError, match="ACESTEP_EDGE_INT8_WEIGHTS must be s8, u8, stored or auto"):
        int8_weight_form("u8", vnni)
    monkeypatch.delenv(cpu_features.OVERRIDE_ENV)
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "aarch64")
    assert int8_weight_form("u8", frozenset({"asimd", "asimddp"}))[0] == "u8"
    assert int8_weight_form("s8", None)[0] == "s8"


def test_this_cpu(tmp_path, monkeypatch):
    """The form chosen on the machine running the test matches its /proc/cpuinfo flags."""
    monkeypatch.delenv(cpu_features.OVERRIDE_ENV, raising=False)
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    form, why = int8_weight_form("u8")
    expected = "s8" if set(cpu_features.VNNI_FLAGS) & flags else "u8"
    assert form == (expected if cpu_features.platform.machine().lower() in ("x86_64", "amd64") else "u8"), why
    print(f"this CPU: {cpu_features.cpu_summary(flags)} -> {form} ({why})")
