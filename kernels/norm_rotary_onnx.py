"""Export-side RMSNorm and rotary: ``acestep::`` custom ops and their standard / ORT onnxscript bodies."""

from __future__ import annotations

import torch
from onnxscript import opset23 as op

from acestep_edge.kernels.ort_schemas import msft  # also registers the ORT schemas op.* needs

from acestep_edge.kernels.lowering import eager
from acestep_edge.kernels.rmsnorm import rms_norm as _eager_rms_norm
from acestep_edge.kernels.rotary import apply_rotary as _eager_apply_rotary



@torch.library.custom_op("acestep::rms_norm", mutates_args=())
def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    with eager():
        return _eager_rms_norm(x, weight, eps).contiguous()


@fused_rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, weight.dtype))


@torch.library.custom_op("acestep::apply_rotary", mutates_args=())
def fused_apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    with eager():
        return _eager_apply_rotary(x, cos, sin).contiguous()


@fused_apply_rotary.register_fake
def _(x, cos, sin):
    return torch.empty_like(x)


# The plain forms are written so that the exporter's opset-23 fusions (onnxscript's RMSNormalization
# and RotaryEmbedding rewrite rules, on by default with optimize=True) do not match them: Div
# instead of Reciprocal·Mul, and a ±1 sign vector instead of Neg. Both are exact in floating point.


def plain_rms_norm(x, weight, eps: float):
    """Same maths as `rms_norm` (fp32 statistics, cast back before the weight) in basic ops."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def plain_apply_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    sign = torch.cat([-torch.ones(half, dtype=x.dtype, device=x.device), torch.ones(half, dtype=x.dtype, device=x.device)])
    rotated = torch.cat([x[..., half:], x[..., :half]], dim=-1) * sign
    return x * cos + rotated * sin


def lowered_rms_norm(mode: str, x, weight, eps: float):
    if mode == "plain":
        return plain_rms_norm(x, weight, eps)
    return torch.ops.acestep.rms_norm(x, weight, float(eps))


def lowered_apply_rotary(mode: str, x, cos, sin):
    # The fused ops take a half-width [L, D/2] cache, which assumes the Qwen layout cos = cat(f, f)
    # over [L, D] tables (what `rotary_cos_sin` builds); anything else stays in plain ops.
    if mode == "plain" or x.dim() != 4 or cos.dim() != 2 or sin.dim() != 2 or x.shape[-1] % 2:
        return plain_apply_rotary(x, cos, sin)
    return torch.ops.acestep.apply_rotary(x, cos, sin)


# ---- onnxscript bodies (trace-only) ----


def rms_norm_standard(x, weight, eps: float):
    """ONNX ``RMSNormalization``-23: statistics in fp32 (stash_type=1), cast back, then × weight."""
    return op.RMSNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1)


def rms_norm_ort(x, weight, eps: float):
    """ORT ``SimplifiedLayerNormalization`` (ONNX domain, ORT contrib kernel), statistics in fp32.

    Not the com.microsoft Skip variant: that one needs a materialised zero skip and 2-D/3-D input.
    """
    return op.SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1)


def _half_cache_and_positions(x, cos, sin):
    """cos/sin [L, D] → [L, D/2] caches, and position ids [B, L] = 0..L−1."""
    half = x.shape[3] // 2
    start, end, axis = op.Constant(value_ints=[0]), op.Constant(value_ints=[half]), op.Constant(value_ints=[1])
    cos_h, sin_h = op.Slice(cos, start, end, axis), op.Slice(sin, start, end, axis)
    length = op.Squeeze(op.Shape(x, start=2, end=3))
    pos = op.Range(op.Constant(value_int=0), length, op.Constant(value_int=1))  # int64
    pos = op.Expand(op.Unsqueeze(pos, [0]), op.Concat(op.Shape(x, start=0, end=1), op.Shape(x, start=2, end=3), axis=0))
    return cos_h, sin_h, pos


def rotary_standard(x, cos, sin):
    """ONNX ``RotaryEmbedding``-23 on BNSH input, non-interleaved (rotate_half)."""
    cos_h, sin_h, pos = _half_cache_and_positions(x, cos, sin)
    return op.RotaryEmbedding(x, cos_h, sin_h, pos, interleaved=0)


def rotary_ort(x, cos, sin):
    """ORT ``com.microsoft.RotaryEmbedding`` on BNSH input, non-interleaved."""
    cos_h, sin_h, pos = _half_cache_and_positions(x, cos, sin)
    return msft.RotaryEmbedding(x, pos, cos_h, sin_h, interleaved=0)


def translation_functions(mode: str) -> dict:
    table = {
        "standard": (rms_norm_standard, rotary_standard),
        "ort": (rms_norm_ort, rotary_ort),
    }[mode]
    return {torch.ops.acestep.rms_norm.default: table[0], torch.ops.acestep.apply_rotary.default: table[1]}
