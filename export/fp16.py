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
from acestep_edge.export.quantize_graph import (
    Derived,
    add_initializer,
    constant_weight,
    drop_weight,
    replace_node,
)

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


def convert_fp16(model: ir.Model, attention: bool = False) -> int:
    """Rewrite every weight-bearing op with an fp32 constant weight to fp16, in place; returns the count.

    `attention`: also run the fused opset-23 `Attention` nodes in fp16 (for a graph meant for CUDA, whose
    Flash kernel takes only fp16/bf16; it keeps its softmax statistics in fp32 internally).
    """
    graph = model.graph
    count = _shared_tables(graph)
    if attention:
        count += _attention_fp16(graph)
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
    count += _computed_weights(graph)
    _store_rest_fp16(graph)
    return count


def _attention_fp16(graph: ir.Graph) -> int:
    """Fused `Attention` nodes (one output used) with fp16 q, k, v (and a float mask), output cast to fp32."""
    count = 0
    for node in list(graph):
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        if any(out.uses() or out in graph.outputs for out in node.outputs[1:]):
            continue  # KV-cache outputs: not in our graphs; leave such a node as it is
        new_nodes, inputs = [], []
        for i, value in enumerate(node.inputs):
            if value is None or value.dtype != ir.DataType.FLOAT:
                inputs.append(value)  # absent, or the boolean mask
                continue
            cast = _cast(value, ir.DataType.FLOAT16, f"{node.name}_in{i}_fp16")
            new_nodes.append(cast)
            inputs.append(cast.outputs[0])
        half = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()), name=f"{node.name}_fp16",
                       metadata_props=dict(node.metadata_props))
        half.outputs[0].type = ir.TensorType(ir.DataType.FLOAT16)
        half.outputs[0].shape = node.outputs[0].shape
        cast_out = _cast(half.outputs[0], ir.DataType.FLOAT, f"{node.name}_out_fp32")
        replace_node(graph, node, [*new_nodes, half, cast_out], cast_out.outputs[0])
        count += 1
    return count


def _constant_subgraph(value: ir.Value, graph: ir.Graph, seen: set | None = None) -> bool:
    """True when `value` depends on initializers and constants only (e.g. a weight-norm of weight_g, weight_v)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return True
    seen.add(id(value))
    producer = value.producer()
    if producer is None:
        return value.name in graph.initializers
    return all(v is None or _constant_subgraph(v, graph, seen) for v in producer.inputs)


def _computed_weights(graph: ir.Graph) -> int:
    """MatMul/Conv/ConvTranspose whose weight is computed in-graph from constants (the VAE's weight norm,
    left unfolded for large tensors): cast the computed weight and the activation to fp16 around the op."""
    count = 0
    for node in list(graph):
        if node.op_type not in ("MatMul", "Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is None or w.producer() is None or w.dtype != ir.DataType.FLOAT or not _constant_subgraph(w, graph):
            continue
        new_nodes = [_cast(node.inputs[0], ir.DataType.FLOAT16, f"{node.name}_in_fp16"),
                     _cast(w, ir.DataType.FLOAT16, f"{node.name}_w_fp16")]
        inputs = [new_nodes[0].outputs[0], new_nodes[1].outputs[0]]
        for i, extra in enumerate(node.inputs[2:]):
            if extra is None:
                inputs.append(None)
                continue
            cast = _cast(extra, ir.DataType.FLOAT16, f"{node.name}_b{i}_fp16")
            new_nodes.append(cast)
            inputs.append(cast.outputs[0])
        half = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()), name=f"{node.name}_fp16",
                       metadata_props=dict(node.metadata_props))
        half.outputs[0].type = ir.TensorType(ir.DataType.FLOAT16)
        cast_out = _cast(half.outputs[0], ir.DataType.FLOAT, f"{node.name}_out_fp32")
        replace_node(graph, node, [*new_nodes, half, cast_out], cast_out.outputs[0])
        count += 1
    return count


STORE_FP16_ELEMENTS = 4096


def _store_rest_fp16(graph: ir.Graph) -> None:
    """Every other fp32 weight of ≥ STORE_FP16_ELEMENTS elements is stored in fp16 and cast back to fp32 on
    load (ONNX Runtime folds the Cast once): half the bytes, fp32 arithmetic (norm scales, weight-norm
    parameters, modulation tables)."""
    for value in list(graph.initializers.values()):
        src = value.const_value
        if src is None or src.dtype != ir.DataType.FLOAT or int(np.prod(src.shape)) < STORE_FP16_ELEMENTS or not value.uses():
            continue
        if value in graph.outputs:
            continue
        half = _lazy_fp16(graph, value, transpose=False)
        cast = _cast(half, ir.DataType.FLOAT, f"{value.name}_to_fp32")
        cast.outputs[0].type, cast.outputs[0].shape = value.type, value.shape
        users = [u.node for u in value.uses()]
        graph.insert_before(next(iter(graph)), cast)  # at the top: before every user
        for node in users:
            for i, v in enumerate(node.inputs):
                if v is value:
                    node.replace_input_with(i, cast.outputs[0])
        graph.initializers.pop(value.name)


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
