"""The machine's matrix-multiply peak as ONNX Runtime (and numpy) reach it: the yardstick for DiT TFLOP/s.

The MatMul graphs are committed beside this file (a few hundred bytes; the runtime install has no
`onnx` package to build them); `python -m acestep_edge.bench.gemm` regenerates them with onnx.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GRAPHS = {"float32": HERE / "matmul_fp32.onnx", "float16": HERE / "matmul_fp16.onnx"}


def build_matmul_model(dtype: str):
    """Y[M, N] = A[M, K] · B[K, N] with symbolic sizes (needs the onnx package)."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], f"matmul_{dtype}",
        [helper.make_tensor_value_info("A", elem, ["M", "K"]), helper.make_tensor_value_info("B", elem, ["K", "N"])],
        [helper.make_tensor_value_info("Y", elem, ["M", "N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="acestep-edge")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ort_gemm_peak(provider: str = "cpu", threads: int | None = None, dtype: str = "float32", size: int | None = None,
                  repeats: int = 5, device_id: int = 0) -> dict:
    """Best-of-`repeats` TFLOP/s of one size×size×size MatMul (inputs and output on the device via IO binding)."""
    import onnxruntime as ort

    from acestep_edge.runtime.device import DeviceOptions, provider_entries, session_device

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    chain = provider_entries("cuda" if provider == "tensorrt" else provider, DeviceOptions(device_id=device_id),
                             ".", None)
    session = ort.InferenceSession(str(GRAPHS[dtype]), sess_options=so, providers=chain)
    got = session.get_providers()
    device = session_device(got)
    size = size or (8192 if device == "cuda" else 2048)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32).astype(dtype) for _ in range(2))
    binding = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(v, device, device_id) for v in (a, b)]
    binding.bind_ortvalue_input("A", values[0])
    binding.bind_ortvalue_input("B", values[1])
    out = ort.OrtValue.ortvalue_from_shape_and_type([size, size], a.dtype, device, device_id)
    binding.bind_ortvalue_output("Y", out)
    session.run_with_iobinding(binding)  # warm-up (kernel selection, arena)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        best = min(best, time.perf_counter() - start)
    return {"engine": "onnxruntime", "provider": got[0], "dtype": dtype, "size": size, "seconds": best,
            "tflops": 2 * size**3 / best / 1e12}


def numpy_gemm_peak(size: int = 2048, repeats: int = 5) -> dict:
    """The same product with numpy's BLAS (its own thread count), for comparison."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return {"engine": "numpy", "provider": "CPU", "dtype": "float32", "size": size, "seconds": best,
            "tflops": 2 * size**3 / best / 1e12}


def main() -> None:
    import onnx

    for dtype, path in GRAPHS.items():
        onnx.save(build_matmul_model(dtype), str(path))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
