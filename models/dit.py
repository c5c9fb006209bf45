"""The DiT decoder: patching, dual time embeddings, AdaLN layers, output head.

As `AceStepDiTModel` in ace-step/ACE-Step-1.5 acestep/models/xl_base/modeling_acestep_v15_xl_base.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from acestep_edge.kernels.token_chunks import mark

from .config import AceStepConfig
from .layers import MLP, Attention, RMSNorm, rope_for_length


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, scale: float = 1000.0, max_period: float = 10000.0):
    """[cos | sin] of (scale·t)·exp(−ln(max_period)·k/half), computed in fp32
    (official `TimestepEmbedding.timestep_embedding`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t * scale).to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoid → MLP → (temb [B, D], six modulation vectors [B, 6, D])."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.in_channels = in_channels
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.time_proj = nn.Linear(dim, dim * 6)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.linear_1.weight.dtype
        temb = self.linear_2(nn.functional.silu(self.linear_1(timestep_sinusoid(t, self.in_channels).to(dtype))))
        proj = self.time_proj(nn.functional.silu(temb)).unflatten(1, (6, -1))
        return temb, proj


class DiTLayer(nn.Module):
    """AdaLN self-attention (± window) → plain cross-attention → AdaLN MLP, with gated residuals."""

    def __init__(self, cfg: AceStepConfig, layer_idx: int):
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, cfg.window_for(layer_idx))
        self.cross_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.cross_attn = Attention(cfg, None, is_cross=True)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, cfg.hidden_size))

    def forward(self, x, rope, modulation, encoder_states=None, cross_kv=None):
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + modulation).chunk(6, dim=1)
        h = self.self_attn_norm(x) * (1 + scale) + shift
        x = x + self.self_attn(h.to(x.dtype), rope) * gate
        x = x + self.cross_attn(self.cross_attn_norm(x), encoder_states=encoder_states, kv=cross_kv)
        h = self.mlp_norm(x) * (1 + c_scale) + c_shift
        # Token-wise: an export with token chunks runs it in chunks of tokens (kernels/token_chunks.py).
        return x + mark(self.mlp(mark(h.to(x.dtype), "begin")), "end") * c_gate


class DiT(nn.Module):
    """Velocity model v̂(x_t, t | encoder states, context latents), parameter names as `decoder.*`.

    `proj_in`/`proj_out` are registered at Sequential index 1 in the official checkpoint
    (index 0 and 2 are transposes), hence the ModuleDicts keyed "1".
    """

    def __init__(self, cfg: AceStepConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.proj_in = nn.ModuleDict({"1": nn.Conv1d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)})
        self.time_embed = TimestepEmbedding(256, d)
        self.time_embed_r = TimestepEmbedding(256, d)
        self.condition_embedder = nn.Linear(cfg.encoder_hidden_size, d)
        self.layers = nn.ModuleList(DiTLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm_out = RMSNorm(d, cfg.rms_norm_eps)
        self.proj_out = nn.ModuleDict(
            {"1": nn.ConvTranspose1d(d, cfg.audio_acoustic_hidden_dim, cfg.patch_size, stride=cfg.patch_size)}
        )
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, d))

    def time_conditioning(self, t: torch.Tensor, r: torch.Tensor | None = None):
        """temb [B, D] and modulation [B, 6, D] for time t and the mean-flow offset t − r (r = t at inference)."""
        r = t if r is None else r
        temb_t, proj_t = self.time_embed(t)
        temb_r, proj_r = self.time_embed_r(t - r)
        return temb_t + temb_r, proj_t + proj_r

    def embed_condition(self, encoder_states: torch.Tensor) -> torch.Tensor:
        return self.condition_embedder(encoder_states)

    def cross_kv(self, embedded_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values: constant for a whole render (the official KV cache)."""
        return [layer.cross_attn.project_kv(embedded_states) for layer in self.layers]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        encoder_states: torch.Tensor | None,
        context: torch.Tensor,
        cross_kv: list | None = None,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, T, 64], t [B], encoder_states [B, S, enc_dim], context [B, T, 128] → velocity [B, T, 64].

        Encoder padding masks are ignored, as in the official `AceStepDiTModel.forward`,
        which sets both masks to None before building its own.
        Pass `cross_kv` (from `cross_kv(embed_condition(...))`) to skip recomputing K/V every step.
        """
        temb, modulation = self.time_conditioning(t, r)
        h = torch.cat([context, x], dim=-1)
        length = h.shape[1]
        patch = self.cfg.patch_size
        # Always pad (by zero frames when T fits): an `if pad:` would make the ONNX exporter
        # specialise the graph to T's parity (export/graphs.py DiTGraph traces this forward).
        h = nn.functional.pad(h, (0, 0, 0, (patch - length % patch) % patch))
        h = self.proj_in["1"](h.transpose(1, 2)).transpose(1, 2)
        rope = rope_for_length(h.shape[1], self.cfg.head_dim, self.cfg.rope_theta, h.device, h.dtype)
        embedded = self.embed_condition(encoder_states) if cross_kv is None else None
        for i, layer in enumerate(self.layers):
            kv = cross_kv[i] if cross_kv is not None else None
            h = layer(h, rope, modulation, encoder_states=embedded, cross_kv=kv)
        shift, scale = (self.scale_shift_table + temb[:, None, :]).chunk(2, dim=1)
        h = (self.norm_out(h) * (1 + scale) + shift).to(h.dtype)
        out = self.proj_out["1"](h.transpose(1, 2)).transpose(1, 2)
        return out[:, :length, :]
