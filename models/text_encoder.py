"""Qwen3 text encoder (Qwen3-Embedding-0.6B as a plain `Qwen3Model`) in our own PyTorch.

As transformers models/qwen3/modeling_qwen3.py `Qwen3Model`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from acestep_edge.kernels.attention import attention
from acestep_edge.kernels.rotary import apply_rotary, rotary_cos_sin
from acestep_edge.models.config import TextEncoderConfig
from acestep_edge.models.layers import RMSNorm


class Qwen3Attention(nn.Module):
    """Causal GQA self-attention with per-head q/k RMSNorm applied before RoPE."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, n, self.head_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        # The norms act on head_dim, so they run on [B, L, H, D] before the head transpose.
        q = self.q_norm(self._heads(self.q_proj(x), self.num_heads)).transpose(1, 2)
        k = self.k_norm(self._heads(self.k_proj(x), self.num_kv_heads)).transpose(1, 2)
        v = self._heads(self.v_proj(x), self.num_kv_heads).transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        out = attention(q, k, v, causal=True, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, l, self.num_heads * self.head_dim))


class Qwen3MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) · up(x))."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(cfg)
        self.mlp = Qwen3MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


def _validate_config(cfg: TextEncoderConfig) -> None:
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads ({cfg.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({cfg.num_key_value_heads}) for grouped-query attention"
        )
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {cfg.head_dim}")


class Qwen3TextEncoder(nn.Module):
    """Qwen3Model without a head; state-dict keys equal transformers' `Qwen3Model`.

    `forward` gives `last_hidden_state` for captions (causal, no padding mask, as the official
    handler calls it); `embed` is the bare table lookup used for lyrics (the official
    handler's `infer_lyric_embeddings`: `text_encoder.embed_tokens(lyric_ids)`).
    Builds under `torch.device("meta")` and loads with `load_state_dict(sd, assign=True)`.
    """

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        _validate_config(cfg)
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor (int64), got {input_ids.dtype}")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids → [B, L, hidden] rows of the embedding table (no layers, no norm)."""
        self._check_ids(input_ids)
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids → last_hidden_state [B, L, hidden] (after the final RMSNorm)."""
        h = self.embed(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # Angles are made in fp32 and cast to the activation dtype, as transformers does.
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype=h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.norm(h)
