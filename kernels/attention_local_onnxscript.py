"""ONNX body of ``acestep::local_attention``: sliding-window (±window) attention as a ``Scan`` over query blocks.

The blocked lowering (`attention_onnx.blocked_local_attention`) computes every block's scores at
once: [B, Hkv, nb, G·block, (2h+1)·block] values, 0.74 GB in fp32 at 7,500 tokens, batch 2 and
XL's heads, with two or three such tensors alive around the mask and softmax. Here one Scan step
takes one block of `block` queries and its (2h+1)·block neighbouring keys (h = ceil(window/block)),
so only one block's scores exist at a time; the maths per block is the blocked lowering's (same
static band mask, key validity from a padded ones vector, fp32 softmax, finite mask fill). K and V
are padded once by h·block before and (h+1)·block after, so every step's key slice has full size.
Lengths and batch stay dynamic (Shape ops); heads, head size, window and block are static.
Runs at export time (trace-only), like `attention_chunked_onnxscript.py`.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
from onnxscript import opset23 as op

from acestep_edge.kernels.attention_chunked_onnxscript import _MASKED, _const, finish_body, query_block

_BODIES = itertools.count()


def band(block: int, halo: int, window: int, groups: int, causal: bool) -> np.ndarray:
    """Bool [G·block, (2h+1)·block]: query a of a block (row g·block + a) may see neighbourhood key c."""
    a = np.arange(block)[:, None]
    c = np.arange((2 * halo + 1) * block)[None, :]
    d = a + halo * block - c  # query position − key position, the same for every block
    allowed = np.abs(d) <= window
    if causal:
        allowed &= d >= 0
    return np.tile(allowed, (groups, 1))


def _body(dtype: ir.DataType, groups: int, block: int, halo: int, d: int, dv: int, scale: float, q5, kp, vp,
          valid, allowed: np.ndarray):
    """Scan body: block start (scalar) → that block's output [B, Hkv, G, block, Dv]."""
    tape = ir.tape.Tape()
    prefix = f"local_attention_{next(_BODIES)}"
    start, begin, rows = query_block(tape, prefix, q5, dtype, groups, block, d, scale)
    # Keys of block n are padded positions [n·block, n·block + (2h+1)·block) = real n·block − h·block + c.
    end = tape.op("Add", [begin, _const(tape, [(2 * halo + 1) * block])])
    axis2 = _const(tape, [2])
    keys = tape.op("Slice", [kp, begin, end, axis2])  # [B, Hkv, K, D]
    values = tape.op("Slice", [vp, begin, end, axis2])
    scores = tape.op("MatMul", [rows, tape.op("Transpose", [keys], {"perm": [0, 1, 3, 2]})])  # [B, Hkv, G·block, K]
    if dtype != ir.DataType.FLOAT:
        scores = tape.op("Cast", [scores], {"to": ir.DataType.FLOAT})  # softmax in fp32
    ok = tape.op("Slice", [valid, begin, end, _const(tape, [3])])  # [B, 1, 1, K]
    ok = tape.op("And", [ok, tape.op("Constant", [], {"value": ir.tensor(allowed)})])
    scores = tape.op("Where", [ok, scores, _const(tape, _MASKED, np.float32)])
    return finish_body(tape, start, scores, values, dtype, groups, block, dv, prefix)


def attention_local(q, k, v, key_padding_mask=None, causal: bool = False, scale: float | None = None,
                    window: int = 128, block: int = 128):
    """softmax(q·kᵀ·scale + band)·v with |i − j| ≤ window, one Scan step per block; q [B, Hq, L, D], k/v [B, Hkv, L, D]."""
    hq, hkv, d, dv = q.shape[1], k.shape[1], q.shape[3], v.shape[3]
    if not all(isinstance(n, int) for n in (hq, hkv, d, dv)):
        raise ValueError(f"local attention needs static head counts and head sizes, got q {q.shape}, v {v.shape}")
    groups = hq // hkv
    halo = -(-window // block)
    scale = d**-0.5 if scale is None else scale
    length = op.Shape(q, start=2, end=3)
    starts = op.Range(op.Constant(value_int=0), op.Squeeze(length), op.Constant(value_int=block))
    q5 = op.Reshape(q, op.Constant(value_ints=[0, hkv, groups, -1, d]))  # [B, Hkv, G, L, D] (a view)
    pads = op.Constant(value_ints=[0, 0, halo * block, 0, 0, 0, (halo + 1) * block, 0])
    kp, vp = op.Pad(k, pads), op.Pad(v, pads)  # [B, Hkv, L + (2h+1)·block, D], once for all steps
    batch_and_length = op.Concat(op.Shape(q, start=0, end=1), length, axis=0)
    ones = op.Expand(op.Constant(value_float=1.0), batch_and_length)  # [B, L]
    if key_padding_mask is not None:
        ones = op.Mul(ones, op.Cast(key_padding_mask, to=ir.DataType.FLOAT))
    valid = op.Pad(ones, op.Constant(value_ints=[0, halo * block, 0, (halo + 1) * block]))
    valid = op.Unsqueeze(op.Greater(valid, op.Constant(value_float=0.5)), [1, 2])  # [B, 1, 1, L + (2h+1)·block]
    body = _body(q.dtype, groups, block, halo, d, dv, scale, q5, kp, vp, valid,
                 band(block, halo, window, groups, causal))
    y = op.Scan(starts, body=body, num_scan_inputs=1)  # [nb, B, Hkv, G, block, Dv]
    y = op.Transpose(y, perm=[1, 2, 3, 0, 4, 5])  # [B, Hkv, G, nb, block, Dv]
    y = op.Reshape(y, op.Constant(value_ints=[0, hq, -1, dv]))
    return op.Slice(y, op.Constant(value_ints=[0]), length, op.Constant(value_ints=[2]))
