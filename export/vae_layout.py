"""VAE decoder rewrite for ONNX Runtime's CPU convolutions: weight norm folded, Conv1d run as Conv2d on [B, C, 1, T].

ONNX Runtime's NCHWc layout transformer (graph optimisation level ALL, CPU) only takes 2-D convolutions:
a Conv1d runs as im2col + SGEMM, the same convolution over a unit height runs on MLAS's blocked
direct-convolution kernels. The rewrite keeps the graph's inputs and outputs ([B, 64, T] → [B, 2, T·hop]):
one Unsqueeze after the input, one Squeeze before the output, every convolution weight and per-channel
constant given a unit axis 2. Weight norm (g · v / ‖v‖) is folded into constant weights first: the
exporter's optimiser leaves it unfolded for tensors this large, and ONNX Runtime would otherwise fold it
again at every session creation. The arithmetic is the same fp32 maths in another order.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

# Ops the rewrite understands: convolutions and the elementwise ops of Snake and the residual adds.
_CONV = ("Conv", "ConvTranspose")
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Sin", "Cos", "Pow", "Neg", "Exp", "Reciprocal", "Identity")
_FOLD_LIMIT = 1 << 40  # fold every constant subgraph (weight norm), whatever its size


def fold_weight_norm(model: ir.Model) -> None:
    """Constant-fold the graph with no size limit (g · v / ‖v‖ becomes one weight per convolution)."""
    from onnxscript.optimizer import fold_constants

    fold_constants(model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
    model.graph.sort()
    for name in [n for n, v in model.graph.initializers.items() if not v.uses() and v not in model.graph.outputs]:
        model.graph.initializers.pop(name)


def _unsupported(graph: ir.Graph) -> list[str]:
    return sorted({n.op_type for n in graph if n.domain not in ("", "ai.onnx")
                   or n.op_type not in _CONV + _ELEMENTWISE + ("Constant",)})


def _with_unit_axis(value: ir.Value, graph: ir.Graph) -> None:
    """Rank-3 constant [a, b, c] → [a, b, 1, c] (conv weights [O, I, K], per-channel tables [1, C, 1])."""
    array = value.const_value.numpy()
    new = ir.tensor(np.ascontiguousarray(array[:, :, None, :]), name=value.name)
    value.const_value = new
    value.shape = ir.Shape(new.shape)


def _conv_attributes(node: ir.Node, kernel: int) -> None:
    attrs = node.attributes
    for key, fill in (("strides", 1), ("dilations", 1)):
        old = attrs.get(key)
        attrs[key] = ir.AttrInt64s(key, [fill] + (list(old.as_ints()) if old is not None else [1]))
    old = attrs.get("output_padding")
    if old is not None:
        attrs["output_padding"] = ir.AttrInt64s("output_padding", [0] + list(old.as_ints()))
    attrs["kernel_shape"] = ir.AttrInt64s("kernel_shape", [1, kernel])
    pads = attrs.get("pads")
    if pads is not None:
        begin, end = pads.as_ints()
        attrs["pads"] = ir.AttrInt64s("pads", [0, begin, 0, end])
    if "auto_pad" in attrs and attrs["auto_pad"].as_string() not in ("NOTSET", ""):
        raise ValueError(f"{node.name}: auto_pad {attrs['auto_pad'].as_string()} is not supported by the 2-D rewrite")


def conv1d_as_conv2d(model: ir.Model) -> int:
    """Rewrite a single-input, single-output graph of 1-D convolutions and elementwise ops to 2-D, in place.

    Returns the number of convolutions rewritten. Raises ValueError (graph untouched) when the graph has
    ops the rewrite does not understand or constants it cannot place.
    """
    graph = model.graph
    bad = _unsupported(graph)
    if bad or len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"conv1d_as_conv2d: needs one input, one output, convolutions and elementwise ops only "
                         f"(found {', '.join(bad) or 'other IO'})")
    constants = []
    for node in graph:
        for value in node.inputs:
            if value is None or value.const_value is None or value in constants:
                continue
            rank = len(value.const_value.shape)
            if rank == 3:
                constants.append(value)
            elif rank > 1 or (rank == 1 and node.op_type not in _CONV and value.const_value.shape[0] != 1):
                raise ValueError(f"conv1d_as_conv2d: constant {value.name} of shape {value.const_value.shape} "
                                 f"feeds {node.op_type}; cannot give it a unit axis")
    convs = [n for n in graph if n.op_type in _CONV]
    for value in constants:
        _with_unit_axis(value, graph)
    for node in convs:
        _conv_attributes(node, int(node.inputs[1].const_value.shape[-1]))
    axes_node = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array([2], np.int64)))],
                        name="conv2d_unit_axis")
    axes = axes_node.outputs[0]
    axes.name = "conv2d_unit_axis"
    inp = graph.inputs[0]
    uses = list(inp.uses())  # before the Unsqueeze becomes a use of its own
    unsqueeze = ir.Node("", "Unsqueeze", [inp, axes], name="conv2d_unsqueeze")
    graph.insert_before(next(iter(graph)), [axes_node, unsqueeze])
    for use in uses:
        use.node.replace_input_with(use.idx, unsqueeze.outputs[0])
    out = graph.outputs[0]
    name, dtype, shape = out.name, out.dtype, out.shape
    out.name = f"{name}_2d"
    squeeze = ir.Node("", "Squeeze", [out, axes], name="conv2d_squeeze")
    graph.append(squeeze)
    result = squeeze.outputs[0]
    result.name, result.dtype, result.shape = name, dtype, shape
    graph.outputs[0] = result
    for node in graph:  # intermediate shapes changed rank: let ONNX Runtime infer them again
        if node is squeeze:
            continue
        for value in node.outputs:
            value.shape = None
    return len(convs)
