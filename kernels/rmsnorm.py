"""RMSNorm with fp32 statistics: torch function and numpy reference.

Semantics of transformers models/qwen3/modeling_qwen3.py `Qwen3RMSNorm`.
"""

from __future__ import annotations

import numpy as np

from acestep_edge.kernels.lowering import current_mode


def rms_norm(x, weight, eps: float):
    """y = weight · (x / sqrt(mean(x², -1) + eps)); variance and rsqrt in fp32, cast back before the weight.

    The cast-back order matters for fp16/bf16 parity with the official model. Under
    `kernels.lowering.use_lowering(mode)` it traces to that mode's ONNX form.
    """
    mode = current_mode()
    if mode is not None:
        from acestep_edge.kernels.norm_rotary_onnx import lowered_rms_norm

        return lowered_rms_norm(mode, x, weight, eps)
    import torch

    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(dtype)


def rms_norm_ref(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    h = x.astype(np.float64)
    h = h / np.sqrt((h * h).mean(-1, keepdims=True) + eps)
    return (weight.astype(np.float64) * h).astype(x.dtype)
