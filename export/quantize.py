"""Weight-only int8/int4 quantisation of the transformer linear layers, in ONNX Runtime's own contrib ops.

Two schemes (the manifest records which one a graph uses, with its parameters and the reason):

- `com.microsoft.MatMulNBits` (bits 8 or 4, block-wise scales along K, optional zero points): every
  provider has a kernel, and the weights stay packed in memory (the small-memory path).
- `com.microsoft.DynamicQuantizeMatMul` (int8 weights with one scale per output channel; the
  activations are quantised to uint8 per call): ONNX Runtime CPU runs it on its integer GEMM, which
  on this project's CPU benchmark took 0.53–0.60× the fp32 time while MatMulNBits int8 was ~1.05× (the
  fast CPU path).

Only the linear layers inside transformer blocks are rewritten (attention q/k/v/o, cross-attention,
MLP gate/up/down: torch name scopes `…layers.N.{self_attn,cross_attn,mlp}.…`); norms, embeddings,
timestep and conditioning projections and the output head keep their precision. Weights are
quantised lazily when the bundle is saved (export/quantize_graph.py), one tensor at a time.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import onnx_ir as ir
from acestep_edge.export.quantize_graph import (
    Derived,
    Weight,
    add_initializer,
    constant_weight,
    drop_weight,
    name_scope,
    replace_node,
    use_opset,
)

MS = "com.microsoft"
# Linear layers inside a transformer block; module paths like `dit.layers.3.mlp.down_proj`.
BLOCK_LINEAR = re.compile(r"(^|\.)layers\.\d+\.(self_attn|cross_attn|mlp)\.[a-z_]+_proj$")


@dataclass(frozen=True)
class QuantScheme:
    """How a graph's block linears are quantised (recorded as the manifest's `quantization`)."""

    op: str  # "com.microsoft.MatMulNBits" | "com.microsoft.DynamicQuantizeMatMul"
    bits: int
    block_size: int | None  # None: one scale per output channel
    symmetric: bool
    accuracy_level: int | None  # MatMulNBits only: 4 = int8 compute on CPU, 0/None = the provider's default
    provider: str  # the execution provider the scheme was chosen for
    reduce_range: bool = False  # 7-bit weights (AVX2 u8s8 GEMMs can saturate int16 pair sums at 8 bits)
    weight_dtype: str = "int8"  # DynamicQuantizeMatMul: int8 (u8s8 GEMM) or uint8 with zero point 128 (u8u8)
    why: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


NBITS = f"{MS}.MatMulNBits"
DYNAMIC = f"{MS}.DynamicQuantizeMatMul"

# (precision, target provider) → scheme. The CPU int8 choice is the fast path; int4 and the GPU
# schemes are the small-memory path (packed weights in every provider's memory).
SCHEMES: dict[tuple[str, str], QuantScheme] = {
    ("int8", "cpu"): QuantScheme(
        DYNAMIC, 8, None, True, None, "cpu", weight_dtype="uint8",
        why="ONNX Runtime CPU integer GEMM: 0.53-0.60x of ORT fp32 time per forward on the 8x1024 DiT benchmark "
            "(same run), where MatMulNBits int8 gave 1.05x (no 8-bit int8-compute kernel without VNNI). Per-channel symmetric weights stored as uint8 "
            "with zero point 128 (u8u8 GEMM): int8 weights (u8s8 GEMM, ~9% less CPU time on the 8x1024 DiT) "
            "saturate the 16-bit pair sums on AVX2 CPUs without VNNI: 9.7% vs 1.2% max rel error on one random "
            "256x128 MatMul, and on the tiny test checkpoints 9.1% vs 2.4% (DiT) and 37% vs 5.3% (text "
            "encoder), over their budgets"),
    ("int8", "gpu"): QuantScheme(
        NBITS, 8, 32, True, None, "cuda",
        why="MatMulNBits has CUDA kernels and keeps the weights packed (DynamicQuantizeMatMul is CPU-only)"),
    ("int4", "cpu"): QuantScheme(
        NBITS, 4, 128, False, 4, "cpu",
        why="smallest weights (~0.18x fp32 at XL with blocks of 32, a little less with 128); accuracy level 4 = "
            "int8 compute on the CPU MLAS kernels (VNNI: level 0 costs 1.25x its CPU time); asymmetric blocks "
            "of 128: 0.80x the CPU time of blocks of 32 on the 8x1024 DiT benchmark (Zen 4, avx512_vnni), "
            "max rel error 0.138 vs 0.130"),
    ("int4", "gpu"): QuantScheme(
        NBITS, 4, 32, False, None, "cuda",
        why="smallest weights (~0.18x fp32 at XL) with CUDA kernels; asymmetric blocks of 32"),
}
TARGETS = ("cpu", "gpu")


def scheme_for(precision: str, target: str) -> QuantScheme:
    try:
        return SCHEMES[(precision, target)]
    except KeyError:
        raise ValueError(f"no {precision} scheme for target {target!r}; targets: {', '.join(TARGETS)}") from None


def block_linears(model: ir.Model) -> list[tuple[ir.Node, Weight]]:
    """The MatMuls of transformer-block linear layers whose weight is a constant [K, N] matrix."""
    graph = model.graph
    found = []
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        if not BLOCK_LINEAR.search(name_scope(node)):
            continue
        weight = constant_weight(node, 1, graph)
        if weight is not None:
            found.append((node, weight))
    return found


def quantize_model(model: ir.Model, scheme: QuantScheme) -> int:
    """Rewrite every block linear of `model` with `scheme`, in place; returns how many were rewritten."""
    targets = block_linears(model)
    for node, weight in targets:
        if scheme.op == NBITS:
            _to_nbits(model.graph, node, weight, scheme)
        elif scheme.op == DYNAMIC:
            _to_dynamic(model.graph, node, weight, scheme)
        else:
            raise ValueError(f"unknown quantisation op {scheme.op!r}")
        drop_weight(model.graph, weight)
    if targets:
        use_opset(model, MS)
    return len(targets)


# -- MatMulNBits -------------------------------------------------------------------------------


def nbits_quantize(kn: np.ndarray, bits: int, block: int, symmetric: bool):
    """[K, N] float32 → (packed uint8 [N, K/block, block·bits/8], scales [N·K/block], zero points or None),
    with ONNX Runtime's own packing routines (the same ones its MatMulNBits quantiser calls)."""
    from onnxruntime.capi._pybind_state import (
        quantize_matmul_4bits,
        quantize_matmul_8bits,
    )

    k, n = kn.shape
    blocks = -(-k // block)
    pad = blocks * block - k
    if pad:
        kn = np.pad(kn, ((0, pad), (0, 0)))
    kn = np.ascontiguousarray(kn, dtype=np.float32)
    per_byte = 8 // bits
    packed = np.zeros((n, blocks, block // per_byte), dtype=np.uint8)
    zero = np.zeros((n, -(-blocks // per_byte)), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    fn = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    fn(packed, kn, scales, zero, block, n, k + pad, symmetric)
    return packed, scales.reshape(-1), (None if symmetric else zero.reshape(-1))


def _to_nbits(graph: ir.Graph, node: ir.Node, weight: Weight, s: QuantScheme) -> None:
    k, n = weight.kn_shape
    blocks = -(-k // s.block_size)
    per_byte = 8 // s.bits
    derived = Derived(lambda: nbits_quantize(weight.kn(), s.bits, s.block_size, s.symmetric))
    base = weight.value.name
    inputs = [node.inputs[0],
              add_initializer(graph, f"{base}_Q{s.bits}",
                              derived.tensor(0, ir.DataType.UINT8, (n, blocks, s.block_size // per_byte), f"{base}_Q{s.bits}")),
              add_initializer(graph, f"{base}_scales", derived.tensor(1, ir.DataType.FLOAT, (n * blocks,), f"{base}_scales"))]
    if not s.symmetric:
        zp = (n * -(-blocks // per_byte),)
        inputs.append(add_initializer(graph, f"{base}_zero_points",
                                      derived.tensor(2, ir.DataType.UINT8, zp, f"{base}_zero_points")))
    attrs = [ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", s.bits),
             ir.AttrInt64("block_size", s.block_size)]
    if s.accuracy_level:
        attrs.append(ir.AttrInt64("accuracy_level", s.accuracy_level))
    new = ir.Node(MS, "MatMulNBits", inputs, attrs, name=f"{node.name}_Q{s.bits}",
                  metadata_props=dict(node.metadata_props))
    replace_node(graph, node, [new], new.outputs[0])


# -- DynamicQuantizeMatMul ---------------------------------------------------------------------


def per_channel_int8(kn: np.ndarray, reduce_range: bool = False, weight_dtype: str = "int8"):
    """Symmetric 8-bit per output channel: [K, N] → (q [K, N], scales [N], zero points [N] or None);
    w ≈ (q − zero) · scale. weight_dtype uint8 stores q + 128 with zero point 128 (same values)."""
    qmax = 63.0 if reduce_range else 127.0
    amax = np.abs(kn).max(axis=0).astype(np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(kn / scale), -qmax, qmax)
    if weight_dtype == "uint8":
        return (q + 128).astype(np.uint8), scale, np.full(kn.shape[1], 128, np.uint8)
    if weight_dtype != "int8":
        raise ValueError(f"weight_dtype must be int8 or uint8, got {weight_dtype!r}")
    return q.astype(np.int8), scale, None


def _to_dynamic(graph: ir.Graph, node: ir.Node, weight: Weight, s: QuantScheme) -> None:
    k, n = weight.kn_shape
    derived = Derived(lambda: per_channel_int8(weight.kn(), s.reduce_range, s.weight_dtype))
    base = weight.value.name
    qtype = ir.DataType.UINT8 if s.weight_dtype == "uint8" else ir.DataType.INT8
    inputs = [node.inputs[0],
              add_initializer(graph, f"{base}_quantized", derived.tensor(0, qtype, (k, n), f"{base}_quantized")),
              add_initializer(graph, f"{base}_scale", derived.tensor(1, ir.DataType.FLOAT, (n,), f"{base}_scale"))]
    if s.weight_dtype == "uint8":
        inputs.append(add_initializer(graph, f"{base}_zero_point",
                                      derived.tensor(2, ir.DataType.UINT8, (n,), f"{base}_zero_point")))
    new = ir.Node(MS, "DynamicQuantizeMatMul", inputs, name=f"{node.name}_dq",
                  metadata_props=dict(node.metadata_props))
    replace_node(graph, node, [new], new.outputs[0])
