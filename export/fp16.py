"""fp16 pass: weights and the weight-bearing ops (MatMul, Gemm, Conv, ConvTranspose, embedding Gather) in
fp16, everything else in fp32.

Each rewritten op gets fp16 weights (cast lazily at save time, export/quantize_graph.py), a Cast of
its activation to fp16 before it and a Cast of its result back to fp32 after it. So the fp32
islands the precision policy asks for are everything between those ops: RMSNorm statistics,
softmax and attention, rotary and timestep angles, residual adds, the VAE's Snake activations.
Graph inputs and outputs keep float32, so the sampler never changes. Weights are half the bytes;
on a GPU the matmuls and convolutions, which are nearly all the work, run on fp16 kernels.

Activations entering an fp16 op must stay within ±65,504: true of the DiT, the Qwen3 text
encoder and the VAE, not of the lyric encoder (its last MLP reaches ~5e5), so the condition
encoder is never given this pass.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from acestep_edge.export.quantize_graph import Derived, add_initializer, constant_weight, drop_weight, replace_node

FP16_MAX = 65504.0
# op type → (weight input index, weight rank(s) accepted, other constant float inputs cast too)
_OPS = {"MatMul": (1, (2,), ()), "Gemm": (1, (2,), (2,)), "Conv": (1, (3, 4), (2,)),
        "ConvTranspose": (1, (3, 4), (2,)), "Gather": (0, (2,), ())}


def _fp16(array: np.ndarray, name: str) -> np.ndarray:
    big = float(np.abs(array).max(initial=0.0))
    if big > FP16_MAX:
        raise ValueError(f"weight {name} has |w| up to {big:.3g}, beyond the fp16 range; export this graph in fp32")
    return array.astype(np.float16)


def _lazy_fp16(graph: ir.Graph, value: ir.Value, transpose: bool) -> ir.Value:
    """An fp16 initializer holding `value` (transposed [N, K] → [K, N] when `transpose`), cast at save time."""
    src = value.const_value
    shape = tuple(src.shape)[::-1] if transpose else tuple(src.shape)

    def compute():
        array = np.asarray(src.numpy(), dtype=np.float32)
        return (_fp16(np.ascontiguousarray(array.T) if transpose else array, value.name),)

    return add_initializer(graph, f"{value.name}_fp16", Derived(compute).tensor(0, ir.DataType.FLOAT16, shape,
                                                                                f"{value.name}_fp16"))


def _cast(value: ir.Value, to: ir.DataType, name: str) -> ir.Node:
    return ir.Node("", "Cast", [value], [ir.AttrInt64("to", to)], name=name)


def _const_float(value: ir.Value | None, graph: ir.Graph) -> bool:
    return value is not None and value.name in graph.initializers and value.const_value is not None \
        and value.const_value.dtype == ir.DataType.FLOAT and len(value.uses()) == 1 and value.producer() is None


def _shared_tables(graph: ir.Graph) -> int:
    """Embedding tables read by several Gathers (the text encoder's caption and lyric lookups): one fp16 copy."""
    count = 0
    for value in list(graph.initializers.values()):
        uses = value.uses()
        if len(uses) < 2 or value.const_value is None or value.const_value.dtype != ir.DataType.FLOAT:
            continue
        if not all(u.node.op_type == "Gather" and u.idx == 0 and u.node.domain in ("", "ai.onnx") for u in uses):
            continue
        half = _lazy_fp16(graph, value, transpose=False)
        for use in uses:
            node = use.node
            gathered = ir.Node(node.domain, "Gather", [half, node.inputs[1]], list(node.attributes.values()),
                               name=f"{node.name}_fp16", metadata_props=dict(node.metadata_props))
            gathered.outputs[0].type = ir.TensorType(ir.DataType.FLOAT16)
            cast = _cast(gathered.outputs[0], ir.DataType.FLOAT, f"{node.name}_out_fp32")
            replace_node(graph, node, [gathered, cast], cast.outputs[0])
            count += 1
        graph.initializers.pop(value.name)
    return count


def convert_fp16(model: ir.Model) -> int:
    """Rewrite every weight-bearing op with an fp32 constant weight to fp16, in place; returns the count."""
    graph = model.graph
    count = _shared_tables(graph)
    for node in list(graph):
        spec = _OPS.get(node.op_type)
        if spec is None or node.domain not in ("", "ai.onnx"):
            continue
        index, ranks, extras = spec
        weight = next((w for r in ranks if (w := constant_weight(node, index, graph, rank=r)) is not None), None)
        if weight is None or (weight.transpose is not None and node.op_type != "MatMul"):
            continue
        extra_ok = all(_const_float(node.inputs[i], graph) for i in extras if i < len(node.inputs)
                       and node.inputs[i] is not None)
        if not extra_ok:
            continue
        _rewrite(graph, node, index, weight, extras)
        count += 1
    return count


def _rewrite(graph: ir.Graph, node: ir.Node, index: int, weight, extras) -> None:
    inputs = list(node.inputs)
    olds = [inputs[i] for i in extras if i < len(inputs) and inputs[i] is not None]
    new_nodes = []
    inputs[index] = _lazy_fp16(graph, weight.value, transpose=weight.transpose is not None)
    for i in extras:
        if i < len(inputs) and inputs[i] is not None:
            old = inputs[i]
            inputs[i] = _lazy_fp16(graph, old, transpose=False)
    if node.op_type != "Gather":  # Gather's other input is the integer indices
        cast_in = _cast(inputs[0], ir.DataType.FLOAT16, f"{node.name}_in_fp16")
        new_nodes.append(cast_in)
        inputs[0] = cast_in.outputs[0]
    half = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()), name=f"{node.name}_fp16",
                   metadata_props=dict(node.metadata_props))
    half.outputs[0].type = ir.TensorType(ir.DataType.FLOAT16)
    half.outputs[0].shape = node.outputs[0].shape
    cast_out = _cast(half.outputs[0], ir.DataType.FLOAT, f"{node.name}_out_fp32")
    new_nodes += [half, cast_out]
    replace_node(graph, node, new_nodes, cast_out.outputs[0])
    for old in olds:
        if not old.uses() and old.name in graph.initializers:
            graph.initializers.pop(old.name)
    drop_weight(graph, weight)
