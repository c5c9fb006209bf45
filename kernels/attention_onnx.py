"""Export-side attention: blocked local (sliding) attention, plain-op attention, and the custom ops.

Lowerings of `kernels.attention.attention` (selected with `kernels.lowering.use_lowering`):
- sliding layers (``window`` set), ``blocked`` form: `blocked_local_attention`, plain traceable torch
  ops, O(L·window) memory, dynamic L in the exported graph; ``chunked`` form: the
  ``acestep::local_attention`` custom op, a ``Scan`` with one query block per step (O(block·window));
- full/cross attention, ``chunked`` form (any mode): the ``acestep::chunked_attention`` custom op,
  which `translation_functions` turns into a ``Scan`` over query blocks (O(block·Lk) scores);
- full/cross attention, ``fused`` form: ``plain`` → MatMul → Softmax → MatMul (what TensorRT
  accepts); ``standard`` / ``ort`` → the ``acestep::attention`` custom op, translated into ONNX
  ``Attention`` (opset 23) or ORT ``MultiHeadAttention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from acestep_edge.kernels.attention import attention as _eager_attention
from acestep_edge.kernels.lowering import eager, full_attention_form, query_block, sliding_attention_form

_MASKED = torch.finfo(torch.float32).min  # finite: a fully masked (padding) row gives no NaN


def _check_heads(q, k, v) -> int:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects 4-D [B, H, L, D] tensors, got {q.dim()}-D, {k.dim()}-D, {v.dim()}-D")
    hq, hkv = q.shape[1], k.shape[1]
    if v.shape[1] != hkv or hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv}, {v.shape[1]})")
    return hq // hkv


def _softmax_fp32(scores, mask, dtype):
    """Softmax in fp32 (as transformers models/qwen3/modeling_qwen3.py `eager_attention_forward`) with a boolean mask;
    result cast back to the value dtype."""
    scores = scores.float()
    if mask is not None:
        scores = torch.where(mask, scores, _MASKED)
    return torch.softmax(scores, dim=-1).to(dtype)


def plain_attention(q, k, v, *, causal: bool = False, key_padding_mask=None, scale=None):
    """Full or cross attention in basic ops; GQA by broadcasting, so K/V heads are never copied."""
    groups = _check_heads(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q5 = (q * scale).unflatten(1, (k.shape[1], groups))  # [B, Hkv, G, Lq, D]
    scores = torch.matmul(q5, k.unsqueeze(2).transpose(-1, -2))  # [B, Hkv, G, Lq, Lk]
    mask = None
    if causal:
        i = torch.arange(q.shape[2], device=q.device)[:, None]
        j = torch.arange(k.shape[2], device=q.device)[None, :]
        mask = j <= i
    if key_padding_mask is not None:
        pad = key_padding_mask.to(torch.bool)[:, None, None, None, :]
        mask = pad if mask is None else (mask & pad)
    p = _softmax_fp32(scores, mask, v.dtype)
    return torch.matmul(p, v.unsqueeze(2)).flatten(1, 2)


def _halo_blocks(window: int, block: int) -> int:
    return -(-window // block)  # ceil: neighbour blocks needed on each side


def _band(block: int, halo: int, window: int, causal: bool, device):
    """Static [block, (2·halo+1)·block] mask of one query block against its key neighbourhood.

    Query a of block n is position n·block + a; key c is n·block − halo·block + c, so i − j does not
    depend on n and one small constant mask serves every block.
    """
    a = torch.arange(block, device=device)[:, None]
    c = torch.arange((2 * halo + 1) * block, device=device)[None, :]
    d = a + halo * block - c
    allowed = d.abs() <= window
    if causal:
        allowed &= d >= 0
    return allowed


def _neighbourhoods(x, halo: int, block: int, pad_end, dim: int):
    """[.., L, ..] → [.., nb, (2·halo+1)·block, ..]: each query block's keys, by slicing, no gather."""
    pads = [0, 0] * (x.dim() - 1 - dim) + [halo * block, pad_end + halo * block]
    xb = F.pad(x, pads).unflatten(dim, (-1, block))  # [.., nb + 2·halo, block, ..]
    nb = xb.shape[dim] - 2 * halo
    parts = [xb.narrow(dim, s, nb) for s in range(2 * halo + 1)]
    return torch.cat(parts, dim=dim + 1)


def blocked_local_attention(q, k, v, window: int, block: int | None = None, scale=None, *, causal=False,
                            key_padding_mask=None):
    """Bidirectional sliding-window self-attention (|i − j| ≤ window) in O(L·window) time and memory.

    Queries go in blocks of `block` (default `window`); each block attends to the keys in
    [start − h·block, end + h·block) with h = ceil(window/block), masked to the exact band. Only
    torch ops on symbolic sizes are used, so an exported graph keeps L dynamic. Same contract as
    `attention(q, k, v, window=window)`; q [B, Hq, L, D], k/v [B, Hkv, L, D].
    """
    groups = _check_heads(q, k, v)
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be a non-negative int, got {window!r}")
    block = max(window, 1) if block is None else block
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if isinstance(q.shape[2], int) and isinstance(k.shape[2], int) and q.shape[2] != k.shape[2]:
        raise ValueError(f"sliding-window attention is self-attention: Lq={q.shape[2]} != Lk={k.shape[2]}")
    b, hkv, length = q.shape[0], k.shape[1], q.shape[2]
    halo = _halo_blocks(window, block)
    nb = (length + block - 1) // block
    pad_end = nb * block - length
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    # Queries: [B, Hq, L, D] → [B, Hkv, nb, G·block, D]; a KV head's G query heads share one matmul.
    qb = F.pad(q * scale, (0, 0, 0, pad_end)).unflatten(1, (hkv, groups)).unflatten(3, (-1, block))
    qb = qb.permute(0, 1, 3, 2, 4, 5).flatten(3, 4)
    kb = _neighbourhoods(k, halo, block, pad_end, dim=2)  # [B, Hkv, nb, K, D]
    vb = _neighbourhoods(v, halo, block, pad_end, dim=2)
    scores = torch.matmul(qb, kb.transpose(-1, -2))  # [B, Hkv, nb, G·block, K]

    # Keys outside [0, L) (padding) and user-masked keys are invalid; built from a ones tensor so
    # the mask follows the symbolic L without Python arithmetic on it.
    valid = torch.ones_like(k[:, 0, :, 0], dtype=torch.float32)
    if key_padding_mask is not None:
        valid = valid * key_padding_mask.to(torch.float32)
    valid = _neighbourhoods(valid, halo, block, pad_end, dim=1) > 0.5  # [B, nb, K]
    band = _band(block, halo, window, causal, q.device).repeat(groups, 1)  # [G·block, K]
    mask = valid[:, None, :, None, :] & band

    out = torch.matmul(_softmax_fp32(scores, mask, v.dtype), vb)  # [B, Hkv, nb, G·block, Dv]
    out = out.unflatten(3, (groups, block)).permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(1, 2)
    return out[:, :, :length]


# ---- custom ops: eager body = the eager attention, ONNX body chosen by the translation table ----


def _eager_body(q, k, v, key_padding_mask, causal, scale):
    with eager():
        return _eager_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale).contiguous()


def _output_like(q, v):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


@torch.library.custom_op("acestep::attention", mutates_args=())
def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    return _eager_body(q, k, v, key_padding_mask, causal, scale)


@fused_attention.register_fake
def _(q, k, v, key_padding_mask, causal, scale):
    return _output_like(q, v)


@torch.library.custom_op("acestep::chunked_attention", mutates_args=())
def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
    block: int,
) -> torch.Tensor:
    # Same maths as the fused op; only the ONNX body (a Scan over query blocks of `block`) differs.
    return _eager_body(q, k, v, key_padding_mask, causal, scale)


@chunked_attention.register_fake
def _(q, k, v, key_padding_mask, causal, scale, block):
    return _output_like(q, v)


@torch.library.custom_op("acestep::local_attention", mutates_args=())
def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
    window: int,
    block: int,
) -> torch.Tensor:
    # Same maths as the blocked lowering; the ONNX body is a Scan with one query block per step.
    with eager():
        return _eager_attention(q, k, v, window=window, causal=causal, key_padding_mask=key_padding_mask,
                                scale=scale).contiguous()


@local_attention.register_fake
def _(q, k, v, key_padding_mask, causal, scale, window, block):
    return _output_like(q, v)


def lowered_attention(mode: str, q, k, v, *, window=None, causal=False, key_padding_mask=None, scale=None):
    """What `attention()` runs when a lowering mode is active."""
    _check_heads(q, k, v)
    scale = None if scale is None else float(scale)
    if window is not None:
        if sliding_attention_form(mode) == "chunked":
            if not isinstance(window, int) or window < 0:
                raise ValueError(f"window must be a non-negative int, got {window!r}")
            # Block = window (at least 1), as the blocked lowering's default: 3 blocks of keys per block.
            return torch.ops.acestep.local_attention(q, k, v, key_padding_mask, causal, scale, window, max(window, 1))
        return blocked_local_attention(q, k, v, window, scale=scale, causal=causal, key_padding_mask=key_padding_mask)
    if full_attention_form(mode, key_padding_mask is not None, causal) == "chunked":
        return torch.ops.acestep.chunked_attention(q, k, v, key_padding_mask, causal, scale, query_block())
    if mode == "plain":
        return plain_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale)
    return torch.ops.acestep.attention(q, k, v, key_padding_mask, causal, scale)


def translation_functions(mode: str) -> dict:
    """{custom op overload: onnxscript function} for `mode`: the chunked op always, the fused op if any."""
    from acestep_edge.kernels import attention_chunked_onnxscript as chunked
    from acestep_edge.kernels import attention_local_onnxscript as local
    from acestep_edge.kernels import attention_onnxscript as oscr

    table = {torch.ops.acestep.chunked_attention.default: chunked.attention_chunked,
             torch.ops.acestep.local_attention.default: local.attention_local}
    fused = {"standard": oscr.attention_standard, "ort": oscr.attention_ort}.get(mode)
    if fused is not None:
        table[torch.ops.acestep.attention.default] = fused
    return table
