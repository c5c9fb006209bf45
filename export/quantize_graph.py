"""Graph helpers shared by the precision passes: find a node's constant weight, derive tensors lazily, swap nodes.

Every derived tensor (a quantised weight, its scales, an fp16 copy) is an `onnx_ir.LazyTensor`: it is
computed from its source only when `onnx_ir.save` writes it, one weight at a time. On the XL path the
source itself is lazy (read from the memory-mapped checkpoint), so no pass ever holds the fp32
weights of the whole graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


@dataclass
class Weight:
    """The constant 2-D weight of a MatMul-like node, as [K, N] (ONNX MatMul's B layout).

    `value` is the initializer; `transpose` is the Transpose node between it and the consumer when the
    graph was exported without constant folding (then the initializer is torch's [N, K]).
    """

    value: ir.Value
    transpose: ir.Node | None

    @property
    def kn_shape(self) -> tuple[int, int]:
        shape = tuple(self.value.const_value.shape)
        return (shape[1], shape[0]) if self.transpose is not None else (shape[0], shape[1])

    def kn(self) -> np.ndarray:
        """The weight as a float32 [K, N] array (reads a lazy tensor)."""
        array = np.asarray(self.value.const_value.numpy(), dtype=np.float32)
        return np.ascontiguousarray(array.T) if self.transpose is not None else array


def is_initializer(value: ir.Value | None, graph: ir.Graph) -> bool:
    return value is not None and value.name in graph.initializers and graph.initializers[value.name] is value \
        and value.const_value is not None


def constant_weight(node: ir.Node, index: int, graph: ir.Graph, rank: int = 2) -> Weight | None:
    """The initializer feeding input `index` of `node`, directly or through a Transpose(perm=[1, 0]),
    provided nothing else uses it; None otherwise."""
    if index >= len(node.inputs):
        return None
    value = node.inputs[index]
    if value is None:
        return None
    transpose = None
    producer = value.producer()
    if producer is not None:
        perm = producer.attributes.get("perm")
        if producer.op_type != "Transpose" or producer.domain not in ("", "ai.onnx") or \
                (perm is not None and list(perm.as_ints()) != [1, 0]) or len(value.uses()) != 1:
            return None
        transpose, value = producer, producer.inputs[0]
    if not is_initializer(value, graph) or len(value.const_value.shape) != rank or len(value.uses()) != 1:
        return None
    if value.const_value.dtype != ir.DataType.FLOAT:
        return None
    return Weight(value, transpose)


def name_scope(node: ir.Node) -> str:
    """The torch module path the exporter recorded for a node ('' when absent)."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes", "")
    # Stored as the repr of a list of scopes, innermost last; the last module path is enough here.
    parts = [p.strip(" '\"") for p in scopes.strip("[]").split(",")]
    paths = [p for p in parts if "." in p]
    return paths[-1] if paths else ""


class Derived:
    """Several lazy tensors computed together from one source weight; the last result is cached so the
    source is read once however many outputs (weight, scales, zero points) are written."""

    _last: tuple[int, tuple] | None = None  # shared by all instances: one weight's results at a time

    def __init__(self, compute: Callable[[], tuple[np.ndarray, ...]]):
        self.compute = compute

    def _results(self) -> tuple:
        if Derived._last is None or Derived._last[0] != id(self):
            Derived._last = (id(self), tuple(self.compute()))
        return Derived._last[1]

    def tensor(self, index: int, dtype: ir.DataType, shape: tuple[int, ...], name: str) -> ir.LazyTensor:
        def read():
            array = self._results()[index]
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"derived tensor {name} has shape {array.shape}, expected {shape}")
            return ir.tensor(array, name=name)

        return ir.LazyTensor(read, dtype=dtype, shape=ir.Shape(list(shape)), name=name)


def add_initializer(graph: ir.Graph, name: str, tensor) -> ir.Value:
    """A new initializer with a name unused in the graph."""
    base, i = name, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def replace_node(graph: ir.Graph, old: ir.Node, new_nodes: list[ir.Node], new_output: ir.Value) -> None:
    """Put `new_nodes` where `old` was; `new_output` takes over the uses (and graph-output role) of old's output."""
    out = old.outputs[0]
    new_output.shape, new_output.type = out.shape, out.type
    ir.convenience.replace_nodes_and_values(graph, old, [old], new_nodes, [out], [new_output])


def drop_weight(graph: ir.Graph, weight: Weight) -> None:
    """Remove an unused weight initializer (and its Transpose) after its consumer was replaced."""
    if weight.transpose is not None and not weight.transpose.outputs[0].uses():
        graph.remove(weight.transpose, safe=True)
    if not weight.value.uses() and weight.value.name in graph.initializers:
        graph.initializers.pop(weight.value.name)


def use_opset(model: ir.Model, domain: str, version: int = 1) -> None:
    model.opset_imports.setdefault(domain, version)
