"""Rewrite a graph's DynamicQuantizeMatMul weights between s8 and u8 (zero point 128) when a session is created.

The two forms hold the same values (s8 = u8 − 128: each byte XOR 0x80, zero points too), so the
rewrite is lossless; which one is fast depends on the CPU (runtime/cpu_features.py). The runtime has
no `onnx` package, so the graph file is edited at the protobuf wire level: only the tensors, value
infos and nodes that change are re-encoded, everything else is copied byte for byte.

Memory: the flipped weights are streamed (a tensor at a time) into a file in a temporary folder beside
the bundle's data (hard-linked there when the folder is writable, else copied), ONNX Runtime loads the
rewritten graph from that folder as it would the bundle's own, and the folder is removed once the
session exists. No process ever holds a second copy of the weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

UINT8, INT8 = 2, 3  # onnx TensorProto.DataType
FORM_DTYPE = {"u8": UINT8, "s8": INT8}
DQMM = ("DynamicQuantizeMatMul", "com.microsoft")
FLIPPED_DATA = "int8_form.data"
_CHUNK = 1 << 24


# -- protobuf wire format --------------------------------------------------------------------------


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _enc(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are 10-byte varints
    out = bytearray()
    while True:
        if value < 0x80:
            out.append(value)
            return bytes(out)
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def _fields(buf):
    """(field number, wire type, value, raw bytes) per field; value: int or the payload (memoryview)."""
    buf, pos = memoryview(buf), 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wt in (1, 5):
            size = 8 if wt == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, value, buf[start:pos]


def _ld(num: int, payload: bytes) -> bytes:
    return _enc(num << 3 | 2) + _enc(len(payload)) + bytes(payload)


def _vi(num: int, value: int) -> bytes:
    return _enc(num << 3) + _enc(value)


def _text(value) -> str:
    return bytes(value).decode("utf-8")


# -- the pieces of a graph this rewrite touches -----------------------------------------------------


@dataclass
class Tensor:
    name: str
    dtype: int
    dims: list[int]
    raw: bytes | None  # inline raw_data
    external: dict[str, str] | None  # location / offset / length
    int32_data: list[int] = field(default_factory=list)

    def data(self, folder: Path) -> np.ndarray:
        """The tensor's bytes as uint8 (small tensors only: zero points)."""
        if self.raw is not None:
            return np.frombuffer(self.raw, np.uint8)
        if self.external is not None:
            off, n = int(self.external.get("offset", 0)), int(self.external["length"])
            return np.fromfile(folder / self.external["location"], np.uint8, count=n, offset=off)
        return (np.asarray(self.int32_data, np.int64) & 0xFF).astype(np.uint8)


def _tensor(payload) -> Tensor:
    t = Tensor("", 0, [], None, None)
    for num, wt, value, _ in _fields(payload):
        if num == 1:
            t.dims += [_varint(value, p)[0] for p in _packed(value)] if wt == 2 else [value]
        elif num == 2:
            t.dtype = value
        elif num == 8:
            t.name = _text(value)
        elif num == 9:
            t.raw = bytes(value)
        elif num == 13:
            entry = {n: _text(v) for n, _, v, _ in _fields(value)}
            t.external = (t.external or {}) | {entry.get(1, ""): entry.get(2, "")}
        elif num == 5:
            t.int32_data += [_varint(value, p)[0] for p in _packed(value)] if wt == 2 else [value]
    return t


def _packed(value):
    pos = 0
    while pos < len(value):
        yield pos
        pos = _varint(value, pos)[1]


def _encode_tensor(t: Tensor) -> bytes:
    out = b"".join(_vi(1, d) for d in t.dims) + _vi(2, t.dtype) + _ld(8, t.name.encode())
    if t.external is not None:
        out += b"".join(_ld(13, _ld(1, k.encode()) + _ld(2, v.encode())) for k, v in t.external.items())
        return out + _vi(14, 1)
    return out + _ld(9, t.raw if t.raw is not None else t.data(Path(".")).tobytes())


def _node(payload) -> tuple[list[str], str, str]:
    inputs, op, domain = [], "", ""
    for num, _, value, _ in _fields(payload):
        if num == 1:
            inputs.append(_text(value))
        elif num == 4:
            op = _text(value)
        elif num == 7:
            domain = _text(value)
    return inputs, op, domain


def _with_inputs(payload, inputs: list[str]) -> bytes:
    rest = b"".join(bytes(raw) for num, _, _, raw in _fields(payload) if num != 1)
    return b"".join(_ld(1, name.encode()) for name in inputs) + rest


def _value_info_name(payload) -> str:
    return next((_text(v) for num, _, v, _ in _fields(payload) if num == 1), "")


def _retyped_value_info(payload, dtype: int) -> bytes:
    """ValueInfoProto with type.tensor_type.elem_type = dtype (shape and the rest kept)."""
    def swap(buf, path):
        out = b""
        for num, wt, value, raw in _fields(buf):
            if num == path[0] and len(path) == 1:
                out += _vi(num, dtype)
            elif num == path[0]:
                out += _ld(num, swap(value, path[1:]))
            else:
                out += bytes(raw)
        return out
    return swap(payload, (2, 1, 1))


# -- the rewrite -------------------------------------------------------------------------------------


@dataclass
class Rewrite:
    stored: str  # "u8" | "s8"
    target: str
    ops: int  # DynamicQuantizeMatMul nodes


def _graph_items(graph):
    """Every node (a graph's field 1) and initializer (field 5) of `graph` and of the graphs held in its
    nodes' attributes (a Scan's body, an If's branches): the DiT's token-chunked MLPs put their
    DynamicQuantizeMatMul nodes in Scan bodies while their weights stay in the main graph."""
    for num, _, value, _ in _fields(graph):
        if num in (1, 5):
            yield num, value
        if num == 1:
            for sub in _subgraphs(value):
                yield from _graph_items(sub)


def _subgraphs(node_payload):
    """The graphs of a NodeProto's attributes (AttributeProto g = 6, graphs = 11)."""
    for num, _, attr, _ in _fields(node_payload):
        if num == 5:
            yield from (v for n, _, v, _ in _fields(attr) if n in (6, 11))


def _quant_nodes(graph) -> list[list[str]]:
    """The inputs of every DynamicQuantizeMatMul node, main graph and subgraphs."""
    nodes = (_node(value) for num, value in _graph_items(graph) if num == 1)
    return [inputs for inputs, op, domain in nodes if (op, domain) == DQMM]


def stored_form(model_bytes: bytes) -> tuple[str | None, int]:
    """("u8"/"s8", node count) of a graph's DynamicQuantizeMatMul weights; (None, 0) when it has none."""
    graph = next((v for num, _, v, _ in _fields(model_bytes) if num == 7), b"")
    quant = _quant_nodes(graph)
    weights = {inputs[1] for inputs in quant}
    if not weights:
        return None, 0
    count = len(quant)
    dtypes = {t.dtype for t in (_tensor(v) for num, v in _graph_items(graph) if num == 5) if t.name in weights}
    if dtypes == {UINT8}:
        return "u8", count
    if dtypes == {INT8}:
        return "s8", count
    raise ValueError(f"DynamicQuantizeMatMul weights are neither all uint8 nor all int8 (data types {sorted(dtypes)})")


def rewrite_model(model_bytes: bytes, target: str, folder: Path, out_dir: Path) -> tuple[bytes, Rewrite]:
    """The model with its DynamicQuantizeMatMul weights in `target` form; flipped external tensors are
    streamed to out_dir/FLIPPED_DATA (external tensors of the source are read from `folder`)."""
    stored, count = stored_form(model_bytes)
    if stored is None or stored == target:
        return model_bytes, Rewrite(stored or target, target, count)
    pieces = [(num, value, raw) for num, _, value, raw in _fields(model_bytes)]
    graph = next(value for num, value, _ in pieces if num == 7)
    plan = _Plan.make(graph, target, folder)
    with open(out_dir / FLIPPED_DATA, "wb") as sink:
        new_graph = _rewrite_graph(graph, plan, folder, sink) + b"".join(_ld(5, _encode_tensor(t)) for t in plan.added)
    out = b"".join(_ld(7, new_graph) if num == 7 else bytes(raw) for num, _, raw in pieces)
    return out, Rewrite(stored, target, count)


@dataclass
class _Plan:
    """What changes, model-wide (names are unique across a model's graphs, so one plan serves them all)."""
    target: str
    drop_zp: bool  # s8 with every zero point 128: drop them (the kernel's cheapest, symmetric path)
    flip: set[str]  # tensors whose bytes flip (XOR 0x80) and whose type becomes the target's
    dropped: set[str]  # zero points removed
    added: list[Tensor]  # u8 zero points made for s8 weights stored without one (main graph)

    @classmethod
    def make(cls, graph, target: str, folder: Path) -> "_Plan":
        quant = _quant_nodes(graph)
        tensors = {t.name: t for t in (_tensor(v) for num, v in _graph_items(graph) if num == 5)}
        zps = {inputs[3] for inputs in quant if len(inputs) > 3 and inputs[3]}
        drop_zp = bool(target == "s8" and zps and all(np.all(tensors[z].data(folder) == 128) for z in zps))
        added = {}
        if target == "u8":
            for inputs in quant:
                if len(inputs) < 4 or not inputs[3]:
                    n = tensors[inputs[1]].dims[-1]
                    name = _zero_point_name(inputs[1])
                    added[name] = Tensor(name, UINT8, [n], np.full(n, 0x80, np.uint8).tobytes(), None)
        weights = {inputs[1] for inputs in quant}
        return cls(target, drop_zp, weights | (set() if drop_zp else zps),
                   zps if drop_zp else set(), [t for name, t in added.items() if name not in tensors])

    @property
    def dtype(self) -> int:
        return FORM_DTYPE[self.target]

    def inputs(self, inputs: list[str]) -> list[str]:
        """A DynamicQuantizeMatMul node's inputs in the target form."""
        inputs = list(inputs)
        if self.drop_zp and len(inputs) > 3:
            inputs[3] = ""
            while inputs and inputs[-1] == "":
                inputs.pop()
        elif self.target == "u8" and (len(inputs) < 4 or not inputs[3]):
            inputs += [""] * (4 - len(inputs))
            inputs[3] = _zero_point_name(inputs[1])
        return inputs


def _zero_point_name(weight: str) -> str:
    return f"{weight}_zero_point_u8"


def _rewrite_graph(graph, plan: _Plan, folder: Path, sink) -> bytes:
    out = bytearray()
    for num, _, value, raw in _fields(graph):
        if num == 1:
            out += _ld(1, _rewrite_node(value, plan, folder, sink))
        elif num == 5:
            t = _tensor(value)
            if t.name in plan.dropped:
                continue
            out += _ld(5, _encode_tensor(_flipped(t, plan.dtype, folder, sink))) if t.name in plan.flip else bytes(raw)
        elif num in (11, 12, 13) and _value_info_name(value) in plan.dropped:
            continue
        elif num in (11, 12, 13) and _value_info_name(value) in plan.flip:
            out += _ld(num, _retyped_value_info(value, plan.dtype))
        else:
            out += bytes(raw)
    return bytes(out)


def _rewrite_node(node, plan: _Plan, folder: Path, sink) -> bytes:
    """A node with its inputs in the target form (DynamicQuantizeMatMul) and its subgraphs rewritten."""
    inputs, op, domain = _node(node)
    if (op, domain) == DQMM:
        node = _with_inputs(node, plan.inputs(inputs))
    if next(_subgraphs(node), None) is None:
        return bytes(node)
    out = bytearray()
    for num, _, value, raw in _fields(node):
        if num != 5:
            out += bytes(raw)
            continue
        attr = bytearray()
        for n, _, v, r in _fields(value):
            attr += _ld(n, _rewrite_graph(v, plan, folder, sink)) if n in (6, 11) else bytes(r)
        out += _ld(5, bytes(attr))
    return bytes(out)


def _flipped(t: Tensor, dtype: int, folder: Path, sink) -> Tensor:
    """The same tensor with every byte XOR 0x80 and `dtype`; external data streamed to `sink`."""
    if t.external is None:
        return Tensor(t.name, dtype, t.dims, (t.data(folder) ^ 0x80).tobytes(), None)
    off, n = int(t.external.get("offset", 0)), int(t.external["length"])
    pad = -sink.tell() % 4096  # page-aligned, as the exporter writes them
    sink.write(b"\0" * pad)
    start = sink.tell()
    with open(folder / t.external["location"], "rb") as src:
        src.seek(off)
        for done in range(0, n, _CHUNK):
            chunk = np.frombuffer(src.read(min(_CHUNK, n - done)), np.uint8)
            sink.write((chunk ^ 0x80).tobytes())
    return Tensor(t.name, dtype, t.dims, None, {"location": FLIPPED_DATA, "offset": str(start), "length": str(n)})


def external_files(model_bytes: bytes) -> set[str]:
    """The external data files a graph's initializers name (the bundle writes at most one)."""
    graph = next((v for num, _, v, _ in _fields(model_bytes) if num == 7), b"")
    return {t.external["location"] for t in (_tensor(v) for num, v in _graph_items(graph) if num == 5)
            if t.external}


def staged_model(path: Path, target: str):
    """(model path to load, Rewrite, cleanup) for graph file `path` with its int8 weights in `target` form.

    Nothing changes (the original path, a no-op cleanup) when the graph has no DynamicQuantizeMatMul
    or already stores `target`.
    """
    model_bytes = path.read_bytes()
    stored, count = stored_form(model_bytes)
    if stored is None or stored == target:
        return path, Rewrite(stored or target, target, count), lambda: None
    stage = _stage_dir(path.parent)
    try:
        for name in external_files(model_bytes):
            if Path(name).name != name or name in ("", ".", ".."):  # ONNX Runtime's rule: inside the model's folder
                raise ValueError(f"{path}: external data location {name!r} is not a file beside the graph")
            _link_or_copy(path.parent / name, Path(stage) / name)
        new_bytes, rewrite = rewrite_model(model_bytes, target, path.parent, Path(stage))
        staged = Path(stage) / path.name
        staged.write_bytes(new_bytes)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return staged, rewrite, lambda: shutil.rmtree(stage, ignore_errors=True)


def _stage_dir(bundle: Path) -> str:
    try:  # beside the bundle: same file system, so its data file is hard-linked, not copied
        return tempfile.mkdtemp(prefix=".int8-form-", dir=bundle)
    except OSError:
        return tempfile.mkdtemp(prefix="acestep-edge-int8-form-")


def _link_or_copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise ValueError(f"external data file {src} is missing")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
