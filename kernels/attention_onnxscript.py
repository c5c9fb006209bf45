"""onnxscript bodies of ``acestep::attention``: ONNX ``Attention`` (opset 23) or ORT ``MultiHeadAttention``.

These run at export time (trace-only): Python branches on attributes and on the static head counts
pick the nodes; sequence lengths and batch stay symbolic.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript import opset23 as op

from acestep_edge.kernels.ort_schemas import msft



def _causal_mask(q, k):
    """Bool [Lq, Lk], True where key j ≤ query i (top-left aligned, as torch's `band_mask`)."""
    zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
    lq = op.Squeeze(op.Shape(q, start=2, end=3))
    lk = op.Squeeze(op.Shape(k, start=2, end=3))
    i = op.Unsqueeze(op.Range(zero, lq, one), [1])
    j = op.Unsqueeze(op.Range(zero, lk, one), [0])
    return op.LessOrEqual(j, i)


def attention_standard(q, k, v, key_padding_mask=None, causal: bool = False, scale: float | None = None):
    """ONNX ``Attention``-23 on 4-D BNSH inputs; GQA is native (q_num_heads from the shapes)."""
    if key_padding_mask is None:
        y, _, _, _ = op.Attention(q, k, v, is_causal=int(causal), scale=scale)
        return y
    # ORT requires the mask's query axis to be the real Lq (no size-1 broadcast there).
    pad = op.Unsqueeze(op.Cast(key_padding_mask, to=ir.DataType.BOOL), [1, 2])  # [B, 1, 1, Lk]
    if causal:
        pad = op.And(pad, _causal_mask(q, k))
    shape = op.Concat(op.Shape(q, start=0, end=1), op.Constant(value_ints=[1]), op.Shape(q, start=2, end=3),
                      op.Shape(k, start=2, end=3), axis=0)
    y, _, _, _ = op.Attention(q, k, v, op.Expand(pad, shape), scale=scale)
    return y


def attention_ort(q, k, v, key_padding_mask=None, causal: bool = False, scale: float | None = None):
    """ORT ``MultiHeadAttention`` on 3-D BSNH inputs.

    GQA without copying K/V: MHA has one head count, so the G query heads that share a KV head are
    stacked along the query axis (Lq → G·Lq) and MHA runs with Hkv heads. That is exact for
    bidirectional attention because every query row is independent. Causal attention depends on the
    row's position, so there the K/V heads are repeated instead.
    """
    hq, hkv, d, dv = q.shape[1], k.shape[1], q.shape[3], v.shape[3]
    groups = hq // hkv
    heads = hkv if not causal else hq
    if not causal:
        q = op.Reshape(q, op.Constant(value_ints=[0, hkv, -1, d]))  # [B, Hkv, G·Lq, D]
    q3 = op.Reshape(op.Transpose(q, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    k4 = op.Transpose(k, perm=[0, 2, 1, 3])  # [B, Lk, Hkv, D]
    v4 = op.Transpose(v, perm=[0, 2, 1, 3])
    if causal and groups > 1:
        rep = op.Constant(value_ints=[1, 1, 1, groups, 1])
        k4 = op.Expand(op.Unsqueeze(k4, [3]), rep)  # [B, Lk, Hkv, G, D]: head h = kv·G + g
        v4 = op.Expand(op.Unsqueeze(v4, [3]), rep)
    flat = op.Constant(value_ints=[0, 0, -1])
    k3, v3 = op.Reshape(k4, flat), op.Reshape(v4, flat)
    mask = None if key_padding_mask is None else op.Cast(key_padding_mask, to=ir.DataType.INT32)
    kwargs = {"num_heads": heads, "unidirectional": int(causal)}
    if scale is not None:
        kwargs["scale"] = scale
    y = msft.MultiHeadAttention(q3, k3, v3, None, mask, **kwargs)  # [B, rows, heads·Dv]
    y = op.Transpose(op.Reshape(y, op.Constant(value_ints=[0, 0, heads, dv])), perm=[0, 2, 1, 3])
    return op.Reshape(y, op.Constant(value_ints=[0, hq, -1, dv]))
