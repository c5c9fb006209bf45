"""ONNX body of ``acestep::chunked_attention``: a ``Scan`` over query blocks, so no [Lq, Lk] scores exist.

The Scan runs over the block starts 0, block, 2·block, …; one step slices its queries
[B, Hkv, G, ≤ block, D] out of q, pads the last block to full size (a Scan output has one shape
per step), scales them, flattens the G query heads into the rows (GQA without copying K/V: the G
heads that share a KV head form one [G·block, D] × [D, Lk] matmul), runs the softmax in fp32 and
multiplies by V. The body reads q, Kᵀ, V and the masks from the outer graph (no copies per step).
Peak scores: B·Hq·block·Lk values per step instead of B·Hq·Lq·Lk. All lengths come from Shape
ops, so Lq, Lk and B stay dynamic; the head counts, head size and block are static attributes.
Runs at export time (trace-only), like `attention_onnxscript.py`.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
from onnxscript import opset23 as op

_MASKED = float(np.finfo(np.float32).min)  # finite fill, as the blocked lowering: no NaN for empty rows
_BODIES = itertools.count()  # one prefix per body: ONNX wants every value name unique in the model


def _const(tape: ir.tape.Tape, values, dtype=np.int64) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.asarray(values, dtype=dtype))})


def _body(dtype: ir.DataType, hkv: int, groups: int, block: int, d: int, dv: int, scale: float, q5, kt, v,
          key_valid, causal_cols):
    """Scan body: block start (scalar) → that block's output [B, Hkv, G, block, Dv]."""
    tape = ir.tape.Tape()
    prefix = f"chunked_attention_{next(_BODIES)}"
    start, begin, rows = query_block(tape, prefix, q5, dtype, groups, block, d, scale)
    scores = tape.op("MatMul", [rows, kt])  # [B, Hkv, G·block, Lk]
    if dtype != ir.DataType.FLOAT:
        scores = tape.op("Cast", [scores], {"to": ir.DataType.FLOAT})  # softmax in fp32
    allowed = key_valid  # [B, 1, 1, Lk] or None
    if causal_cols is not None:
        positions = tape.op("Add", [tape.op("Range", [_const(tape, 0), _const(tape, block), _const(tape, 1)]), start])
        causal = tape.op("LessOrEqual", [causal_cols, tape.op("Unsqueeze", [positions, _const(tape, [1])])])
        causal = tape.op("Tile", [causal, _const(tape, [groups, 1])])  # [G·block, Lk]: rows are (g, i), g-major
        allowed = causal if allowed is None else tape.op("And", [allowed, causal])
    if allowed is not None:
        scores = tape.op("Where", [allowed, scores, _const(tape, _MASKED, np.float32)])
    return finish_body(tape, start, scores, v, dtype, groups, block, dv, prefix)


def query_block(tape: ir.tape.Tape, prefix: str, q5: ir.Value, dtype: ir.DataType, groups: int, block: int,
                d: int, scale: float) -> tuple[ir.Value, ir.Value, ir.Value]:
    """A Scan body's head, shared with `attention_local_onnxscript`: (the scalar block start input, it as a
    1-element tensor, the block's scaled queries [B, Hkv, G·block, D], the last block zero-padded)."""
    start = ir.Value(name=f"{prefix}_start", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    begin = tape.op("Unsqueeze", [start, _const(tape, [0])])
    blk = _const(tape, [block])
    rows = tape.op("Slice", [q5, begin, tape.op("Add", [begin, blk]), _const(tape, [3])])  # ≤ block queries
    short = tape.op("Sub", [blk, tape.op("Shape", [rows], {"start": 3, "end": 4})])  # > 0 in the last block only
    rows = tape.op("Pad", [rows, tape.op("Concat", [_const(tape, [0] * 8), short, _const(tape, [0])], {"axis": 0})])
    rows = tape.op("Reshape", [rows, _const(tape, [0, 0, groups * block, d])])  # [B, Hkv, G·block, D]
    rows = tape.op("Mul", [rows, _const(tape, scale, dtype.numpy())])
    return start, begin, rows


def finish_body(tape: ir.tape.Tape, start: ir.Value, scores: ir.Value, v: ir.Value, dtype: ir.DataType,
                groups: int, block: int, dv: int, prefix: str) -> ir.Graph:
    """A Scan body's tail, shared with `attention_local_onnxscript`: fp32 softmax of the masked scores,
    P·V, output [B, Hkv, G, block, Dv], and every body value named uniquely."""
    probs = tape.op("Softmax", [scores], {"axis": -1})
    if dtype != ir.DataType.FLOAT:
        probs = tape.op("Cast", [probs], {"to": dtype})
    out = tape.op("MatMul", [probs, v])  # [B, Hkv, G·block, Dv]
    out = tape.op("Reshape", [out, _const(tape, [0, 0, groups, block, dv])])
    out.type = ir.TensorType(dtype)
    for i, value in enumerate(v for node in tape.nodes for v in node.outputs):
        value.name = f"{prefix}_{i}"  # unnamed body values would be named per graph and could clash
    return ir.Graph([start], [out], nodes=tape.nodes, name=prefix)


def attention_chunked(q, k, v, key_padding_mask=None, causal: bool = False, scale: float | None = None,
                      block: int = 64):
    """softmax(q·kᵀ·scale + mask)·v, queries in Scan steps of `block`; q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D]."""
    hq, hkv, d, dv = q.shape[1], k.shape[1], q.shape[3], v.shape[3]
    if not all(isinstance(n, int) for n in (hq, hkv, d, dv)):
        raise ValueError(f"chunked attention needs static head counts and head sizes, got q {q.shape}, v {v.shape}")
    groups = hq // hkv
    scale = d**-0.5 if scale is None else scale
    lq = op.Shape(q, start=2, end=3)
    # The Scan iterates over block starts 0, block, 2·block, … < Lq; each step slices its queries
    # out of q itself, so no padded or transposed copy of q is made.
    starts = op.Range(op.Constant(value_int=0), op.Squeeze(lq), op.Constant(value_int=block))
    q5 = op.Reshape(q, op.Constant(value_ints=[0, hkv, groups, -1, d]))  # [B, Hkv, G, Lq, D] (a view)
    kt = op.Transpose(k, perm=[0, 1, 3, 2])  # [B, Hkv, D, Lk], once for all steps
    key_valid = None
    if key_padding_mask is not None:
        key_valid = op.Unsqueeze(op.Cast(key_padding_mask, to=ir.DataType.BOOL), [1, 2])  # [B, 1, 1, Lk]
    causal_cols = None
    if causal:
        lk = op.Squeeze(op.Shape(k, start=2, end=3))
        causal_cols = op.Unsqueeze(op.Range(op.Constant(value_int=0), lk, op.Constant(value_int=1)), [0])  # [1, Lk]

    body = _body(q.dtype, hkv, groups, block, d, dv, scale, q5, kt, v, key_valid, causal_cols)
    y = op.Scan(starts, body=body, num_scan_inputs=1)  # [nb, B, Hkv, G, block, Dv]
    y = op.Transpose(y, perm=[1, 2, 3, 0, 4, 5])  # [B, Hkv, G, nb, block, Dv]
    y = op.Reshape(y, op.Constant(value_ints=[0, hq, -1, dv]))
    return op.Slice(y, op.Constant(value_ints=[0]), lq, op.Constant(value_ints=[2]))
