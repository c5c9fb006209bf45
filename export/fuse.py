"""Graph rewrites that speed up CPU matmuls: fuse linear layers that read the same input into one MatMul.

q/k/v projections of an attention block and gate/up of a SwiGLU MLP all read one activation. As
separate MatMuls, each call packs (and, once quantised, dynamically quantises) that activation
again; one MatMul over the concatenated weight does it once and gives the kernel a wider N. The
result is split back with one `Split`, so every consumer sees the same values as before.

Works on an `onnx_ir.Model` before it is saved, on both weight forms the exporter emits:
- optimised export: `MatMul(x, W_t)` with `W_t` a `[K, N]` initializer (the transpose folded);
- meta-traced XL export (`optimize=False`): `MatMul(x, Transpose(W, perm=[1, 0]))`, `W` `[N, K]`.
The fused weight is an `onnx_ir.LazyTensor` that concatenates its sources only when it is read
(at save time), so lazily streamed XL weights are never all in memory at once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass
class _Member:
    matmul: object  # ir.Node
    weight: object  # ir.Value, the initializer
    transpose: object | None  # ir.Node Transpose(W) in the transposed form, else None
    n: int  # output features


def _member(node) -> _Member | None:
    """The MatMul's constant weight, if it is one of the two exporter forms and used only here."""
    b = node.inputs[1]
    if b is None:
        return None
    if b.is_initializer() and b.const_value is not None and len(b.shape or ()) == 2:
        if len(list(b.uses())) != 1 or b.is_graph_input():
            return None
        return _Member(node, b, None, int(b.shape[1]))
    prod = b.producer()
    if prod is None or prod.op_type != "Transpose" or prod.domain not in ("", "ai.onnx"):
        return None
    perm = prod.attributes.get("perm")
    w = prod.inputs[0]
    if perm is None or tuple(perm.as_ints()) != (1, 0) or w is None or not w.is_initializer():
        return None
    if w.const_value is None or len(w.shape or ()) != 2 or len(list(b.uses())) != 1 or len(list(w.uses())) != 1:
        return None
    return _Member(node, w, prod, int(w.shape[0]))


def _lazy_concat(sources: list, axis: int, name: str):
    import numpy as np
    import onnx_ir as ir

    first = sources[0].const_value
    shape = list(first.shape)
    shape[axis] = sum(int(s.const_value.shape[axis]) for s in sources)
    tensors = [s.const_value for s in sources]

    def read():
        return ir.tensor(np.concatenate([t.numpy() for t in tensors], axis=axis), name=name)

    return ir.LazyTensor(read, dtype=first.dtype, shape=ir.Shape(shape), name=name)


def fuse_shared_input_matmuls(model, min_group: int = 2) -> int:
    """Fuse every group of >= `min_group` weight MatMuls that share their input; returns how many groups.

    Only MatMuls whose weight is a 2-D initializer used by that MatMul alone are fused, and only with
    others of the same weight form, dtype and K. The graph keeps its IO; numerically the result is the
    same GEMM, column block by column block.
    """
    import onnx_ir as ir

    graph = model.graph
    groups: dict[tuple, list[_Member]] = defaultdict(list)
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
            continue
        m = _member(node)
        if m is None:
            continue
        k = int(m.weight.shape[1] if m.transpose is not None else m.weight.shape[0])
        groups[(id(node.inputs[0]), m.transpose is not None, m.weight.const_value.dtype, k)].append(m)

    fused = 0
    for (_, transposed, _, _), members in groups.items():
        if len(members) < min_group:
            continue
        fused += 1
        x = members[0].matmul.inputs[0]
        base = members[0].matmul.name or "matmul"
        wname = f"{base}.fused_weight"
        weight = ir.Value(name=wname, const_value=_lazy_concat([m.weight for m in members], 0 if transposed else 1,
                                                                 wname))
        weight.shape = weight.const_value.shape
        weight.type = ir.TensorType(weight.const_value.dtype)
        graph.register_initializer(weight)
        new_nodes = []
        b = weight
        if transposed:
            t = ir.node("Transpose", [weight], {"perm": [1, 0]}, name=f"{base}.fused_transpose")
            new_nodes.append(t)
            b = t.outputs[0]
        # Keep the first member's torch name scope (export passes select layers by it) and say what was fused.
        mm = ir.node("MatMul", [x, b], name=f"{base}.fused", metadata_props=dict(members[0].matmul.metadata_props))
        mm.metadata_props["acestep_edge.fused_from"] = ",".join(m.weight.name for m in members)
        sizes = ir.Value(name=f"{base}.fused_split_sizes",
                         const_value=ir.tensor([m.n for m in members], dtype=ir.DataType.INT64))
        sizes.shape = ir.Shape([len(members)])
        sizes.type = ir.TensorType(ir.DataType.INT64)
        graph.register_initializer(sizes)
        split = ir.node("Split", [mm.outputs[0], sizes], {"axis": -1}, num_outputs=len(members),
                        name=f"{base}.fused_split")
        new_nodes += [mm, split]
        graph.insert_before(members[0].matmul, new_nodes)
        for m, out in zip(members, split.outputs):
            old = m.matmul.outputs[0]
            out.name, old.name = old.name, f"{old.name}.unfused"
            out.shape, out.type = old.shape, old.type
            ir.convenience.replace_all_uses_with(old, out)
        for m in members:
            graph.remove(m.matmul, safe=True)
            if m.transpose is not None:
                graph.remove(m.transpose, safe=True)
            graph.initializers.pop(m.weight.name)
    return fused
