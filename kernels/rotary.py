"""Rotary position embedding, Qwen3 style (angles in fp32, as transformers models/qwen3/modeling_qwen3.py
`Qwen3RotaryEmbedding.forward`): torch and numpy."""

from __future__ import annotations

import numpy as np

from acestep_edge.kernels.lowering import current_mode


def rotary_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """inv_freq_j = theta^(-2j/head_dim), j = 0..head_dim/2-1 (float32, as transformers builds it)."""
    return (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))).astype(
        np.float32
    )


def rotary_cos_sin(positions, head_dim: int, theta: float, dtype=None):
    """cos, sin of shape [L, head_dim] for integer positions [L]; computed in fp32, then cast.

    An fp16 angle near position 7500 would have a resolution of ~4 rad, so angles never leave fp32.
    """
    import torch

    inv_freq = torch.from_numpy(rotary_inv_freq(head_dim, theta)).to(positions.device)
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if dtype is not None:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos, sin


def rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x, cos, sin):
    """x [B, H, L, D]; cos/sin [L, D] broadcast over batch and heads.

    Under `kernels.lowering.use_lowering(mode)` it traces to that mode's ONNX form.
    """
    mode = current_mode()
    if mode is not None:
        from acestep_edge.kernels.norm_rotary_onnx import lowered_apply_rotary

        return lowered_apply_rotary(mode, x, cos, sin)
    return x * cos + rotate_half(x) * sin


def apply_rotary_ref(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    d = x.shape[-1]
    inv = rotary_inv_freq(d, theta).astype(np.float64)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], -1)
    half = d // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * np.cos(ang) + rot * np.sin(ang)).astype(x.dtype)
