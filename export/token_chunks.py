"""Run each marked token-wise region of a graph (the DiT's MLPs) as a ``Scan`` over chunks of tokens.

At 600 s the DiT's MLP intermediates are [2, 7500, 9728]: 0.58 GB each in fp32, three alive at once.
`models/dit.py` wraps each MLP in `kernels.token_chunks.mark` begin/end markers when the export
asks for token chunks; `chunk_regions` (run by `save_program`, after the precision passes, so the
quantised or fp16 MatMuls are what moves) replaces each pair by

    n = Shape(x)[1];  k = ceil(n / chunk);  size = ceil(n / k)      # balanced: the last chunk wastes < k rows
    Scan over starts 0, size, 2·size, …:  x[:, s:s+size] (zero-padded to size) → region → [B, size, D]
    → Transpose/Reshape to [B, k·size, D] → Slice to n

so only one chunk's intermediates exist at a time. The region's weights and any other outer values
are read from the main graph (no copies); for the CPU int8 scheme that includes the
`DynamicQuantizeMatMul` weights the runtime flips between s8 and u8 (runtime/int8_form.py follows the
nodes into Scan bodies). With chunk 0 the markers are simply removed. The record (`chunk_record`) goes
into the manifest as the graph's `mlp` entry.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from acestep_edge.kernels.token_chunks import DOMAIN, OPS

META_KEY = "acestep.mlp_chunk"
MADE_KEY = "acestep.mlp_chunked_regions"
_IDS = itertools.count()


def _const(tape: ir.tape.Tape, values, dtype=np.int64) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.asarray(values, dtype=dtype))})


def _markers(graph: ir.Graph, which: str) -> list[ir.Node]:
    return [n for n in graph if n.domain == DOMAIN and n.op_type == OPS[which]]


def _region(begin: ir.Node) -> tuple[list[ir.Node], ir.Node]:
    """The nodes between `begin` and its end marker (forward from begin's output), and that end marker."""
    seen: dict[int, ir.Node] = {}
    ends = set()
    todo = [begin.outputs[0]]
    while todo:
        value = todo.pop()
        for user, _ in value.uses():
            if user.domain == DOMAIN and user.op_type == OPS["end"]:
                ends.add(user)
            elif id(user) not in seen:
                if user.domain == DOMAIN:
                    raise ValueError(f"token-chunk region of {begin.name} contains another begin marker")
                seen[id(user)] = user
                todo.extend(user.outputs)
    if len(ends) != 1:
        raise ValueError(f"token-chunk region of {begin.name} reaches {len(ends)} end markers, expected 1")
    end = ends.pop()
    inside = set(seen) | {id(begin), id(end)}
    for node in seen.values():
        for out in node.outputs:
            if out.is_graph_output() or any(id(u) not in inside for u, _ in out.uses()):
                raise ValueError(f"token-chunk region of {begin.name}: {out.name} is used outside the region")
    return [n for n in begin.graph if id(n) in seen], end  # in graph (topological) order


def _unmark(graph: ir.Graph, node: ir.Node) -> None:
    ir.convenience.replace_all_uses_with(node.outputs[0], node.inputs[0])
    graph.remove(node, safe=True)


def _to_scan(graph: ir.Graph, begin: ir.Node, nodes: list[ir.Node], end: ir.Node, chunk: int) -> None:
    prefix = f"token_chunks_{next(_IDS)}"
    x, y_inner = begin.inputs[0], end.inputs[0]
    main = ir.tape.Tape()
    n = main.op("Shape", [x], {"start": 1, "end": 2})  # [1]
    n0 = main.op("Squeeze", [n])
    k = main.op("Div", [main.op("Add", [n0, _const(main, chunk - 1)]), _const(main, chunk)])
    size = main.op("Div", [main.op("Sub", [main.op("Add", [n0, k]), _const(main, 1)]), k])
    size1 = main.op("Unsqueeze", [size, _const(main, [0])])
    starts = main.op("Range", [_const(main, 0), n0, size])

    body = ir.tape.Tape()
    start = ir.Value(name=f"{prefix}_start", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    first = body.op("Unsqueeze", [start, _const(body, [0])])
    rows = body.op("Slice", [x, first, body.op("Add", [first, size1]), _const(body, [1])])
    short = body.op("Sub", [size1, body.op("Shape", [rows], {"start": 1, "end": 2})])  # > 0 in the last chunk only
    rows = body.op("Pad", [rows, body.op("Concat", [_const(body, [0, 0, 0, 0]), short, _const(body, [0])],
                                         {"axis": 0})])
    for i, value in enumerate(v for node in body.nodes for v in node.outputs):
        value.name = f"{prefix}_b{i}"
    for node in nodes:
        graph.remove(node, safe=False)
        for i, value in enumerate(node.inputs):
            if value is begin.outputs[0]:
                node.replace_input_with(i, rows)
        for out in node.outputs:
            out.shape = None  # [B, size, ...] inside the body, not the main graph's [B, L, ...]
    y_inner.type = end.outputs[0].type
    sub = ir.Graph([start], [y_inner], nodes=[*body.nodes, *nodes], name=prefix,
                   opset_imports=dict(graph.opset_imports))
    ys = main.op("Scan", [starts], {"body": sub, "num_scan_inputs": 1})  # [k, B, size, D]
    ys.type = end.outputs[0].type
    y = main.op("Transpose", [ys], {"perm": [1, 0, 2, 3]})
    y = main.op("Reshape", [y, main.op("Concat", [_const(main, [0, -1]), main.op("Shape", [x], {"start": 2})],
                                       {"axis": 0})])
    y = main.op("Slice", [y, _const(main, [0]), n, _const(main, [1])])
    for i, value in enumerate(v for node in main.nodes for v in node.outputs):
        value.name = f"{prefix}_m{i}"
    y.type, y.shape = end.outputs[0].type, end.outputs[0].shape
    graph.insert_before(end, main.nodes)
    ir.convenience.replace_all_uses_with(end.outputs[0], y)
    graph.remove([end, begin], safe=True)


def chunk_regions(model: ir.Model, chunk: int | None = None) -> int:
    """Replace every begin/end marker pair of `model` by a Scan over `chunk` tokens (default: the chunk the
    export recorded in the model's metadata; 0 only removes the markers). Returns the number of Scans made."""
    graph = model.graph
    chunk = int(model.metadata_props.get(META_KEY, "0")) if chunk is None else chunk
    begins = _markers(graph, "begin")
    made = 0
    for begin in begins:
        nodes, end = _region(begin)
        if chunk > 0 and nodes:
            _to_scan(graph, begin, nodes, end, chunk)
            made += 1
        else:
            _unmark(graph, end)
            _unmark(graph, begin)
    left = _markers(graph, "end")
    if left:
        raise ValueError(f"{len(left)} token-chunk end markers without a begin marker")
    model.opset_imports.pop(DOMAIN, None)
    model.metadata_props[MADE_KEY] = str(made + int(model.metadata_props.get(MADE_KEY, "0")))
    return made


def chunk_record(model: ir.Model) -> dict:
    """The manifest's `mlp` record: {"form": "chunked" | "plain", "chunk": tokens or None, "regions": count}."""
    made = int(model.metadata_props.get(MADE_KEY, "0"))
    chunk = int(model.metadata_props.get(META_KEY, "0"))
    return {"form": "chunked" if made else "plain", "chunk": chunk if made else None, "regions": made}
