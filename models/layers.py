"""Building blocks shared by the condition encoder, audio tokenizer and DiT: RMSNorm, attention, MLP, encoder layer.

Parameter names follow the official modules (`AceStepAttention`, `AceStepEncoderLayer` in
ace-step/ACE-Step-1.5 acestep/models/xl_base/modeling_acestep_v15_xl_base.py) so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from acestep_edge.kernels.attention import attention
from acestep_edge.kernels.rmsnorm import rms_norm
from acestep_edge.kernels.rotary import apply_rotary, rotary_cos_sin

from .config import AceStepConfig


class RMSNorm(nn.Module):
    """Learned-scale RMSNorm over the last axis (`kernels.rmsnorm`); one `weight`, as Qwen3RMSNorm names it."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_for_length(length: int, head_dim: int, theta: float, device, dtype):
    """cos/sin for positions 0..length-1 (every ACE-Step sequence starts at position 0)."""
    positions = torch.arange(length, device=device)
    return rotary_cos_sin(positions, head_dim, theta, dtype)


class Attention(nn.Module):
    """GQA attention with per-head q/k RMSNorm; self-attention (RoPE, optional ±window) or cross-attention.

    Official semantics (AceStepAttention): q_norm/k_norm run per head before RoPE; cross-attention
    applies k_norm to the encoder keys and uses no RoPE.
    """

    def __init__(self, cfg: AceStepConfig, window: int | None, is_cross: bool = False):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.window = None if is_cross else window
        self.is_cross = is_cross
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.unflatten(-1, (heads, self.head_dim)).transpose(1, 2)  # [B, H, L, D]

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (normed) and values from `source`; for cross-attention these are constant over a render."""
        k = self.k_norm(self._split(self.k_proj(source), self.kv_heads))
        v = self._split(self.v_proj(source), self.kv_heads)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        encoder_states: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self.q_norm(self._split(self.q_proj(x), self.heads))
        if kv is not None:
            k, v = kv
        else:
            k, v = self.project_kv(encoder_states if self.is_cross else x)
        if not self.is_cross and rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, window=self.window, key_padding_mask=key_padding_mask)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    """SwiGLU without biases: down(silu(gate(x)) · up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class EncoderLayer(nn.Module):
    """Pre-norm bidirectional transformer layer (AceStepEncoderLayer)."""

    def __init__(self, cfg: AceStepConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, cfg.window_for(layer_idx))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, rope, key_padding_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class EncoderStack(nn.Module):
    """`embed_tokens` → encoder layers (RoPE from position 0) → final RMSNorm.

    Shared shape of the lyric encoder, timbre encoder, attention pooler and detokenizer.
    The official lyric/timbre encoders iterate `layers[:num_hidden_layers]`; the encoder view
    inherits the DiT's layer count (32 for XL), so every layer runs — we keep that bound.
    """

    def __init__(self, cfg: AceStepConfig, in_dim: int, num_layers: int):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Linear(in_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def run_layers(self, x: torch.Tensor, key_padding_mask=None, all_layers: bool = False) -> torch.Tensor:
        # The pooler and detokenizer iterate every layer; lyric/timbre encoders stop at num_hidden_layers.
        rope = rope_for_length(x.shape[1], self.cfg.head_dim, self.cfg.rope_theta, x.device, x.dtype)
        layers = self.layers if all_layers else self.layers[: self.cfg.num_hidden_layers]
        for layer in layers:
            x = layer(x, rope, key_padding_mask)
        return self.norm(x)
