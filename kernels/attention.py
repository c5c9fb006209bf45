"""Scaled dot-product attention with GQA, bidirectional ±window band, causal and key padding.

Torch function (used by models/) and numpy reference. The band is inclusive: query i sees key j
iff |i − j| ≤ window (ace-step/ACE-Step-1.5 modeling_acestep_v15_xl_base.py `create_4d_mask`,
bidirectional sliding case). ONNX lowerings live in
`attention_onnx.py`.
"""

from __future__ import annotations

import numpy as np

from acestep_edge.kernels.lowering import current_mode


def band_mask(lq: int, lk: int, window: int | None, causal: bool = False, device=None):
    """Boolean [lq, lk] mask, True where attention is allowed; None when nothing is masked."""
    import torch

    if window is None and not causal:
        return None
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j).abs() <= window
    return allowed


def attention(q, k, v, *, window: int | None = None, causal: bool = False, key_padding_mask=None, scale=None):
    """softmax(q·kᵀ·scale + mask)·v.

    q [B, Hq, Lq, D]; k, v [B, Hkv, Lk, D] with Hq a multiple of Hkv (GQA: each KV head serves
    Hq/Hkv consecutive query heads). key_padding_mask [B, Lk] bool, True = valid key.
    Returns [B, Hq, Lq, D]. Uses torch SDPA (the fastest PyTorch path on CPU and GPU). Under
    `kernels.lowering.use_lowering(mode)` it traces to that mode's ONNX form instead.
    """
    mode = current_mode()
    if mode is not None:
        from acestep_edge.kernels.attention_onnx import lowered_attention

        return lowered_attention(mode, q, k, v, window=window, causal=causal, key_padding_mask=key_padding_mask,
                                 scale=scale)
    import torch
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    mask = band_mask(q.shape[2], k.shape[2], window, causal, device=q.device)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :].to(torch.bool)
        mask = pad if mask is None else (mask[None, None] & pad)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def band_mask_ref(lq: int, lk: int, window: int | None, causal: bool = False) -> np.ndarray:
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    allowed = np.ones((lq, lk), dtype=bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= np.abs(i - j) <= window
    return allowed


def attention_ref(q, k, v, *, window=None, causal=False, key_padding_mask=None, scale=None) -> np.ndarray:
    """Float64 numpy reference with the same contract as `attention`."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k = np.repeat(k, groups, axis=1)
    v = np.repeat(v, groups, axis=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
    allowed = band_mask_ref(q.shape[2], k.shape[2], window, causal)[None, None]
    if key_padding_mask is not None:
        allowed = allowed & np.asarray(key_padding_mask, dtype=bool)[:, None, None, :]
    scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v)
