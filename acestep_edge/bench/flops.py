"""Analytic FLOP count of one DiT forward from the model config (matrix products only, 2 FLOPs per MAC).

What is counted, per forward of batch B on T latent frames (N = ceil(T / patch) tokens) with S
encoder tokens, model width D, H query / G KV heads of size d, intermediate size I:
  proj_in     conv (C_in · patch → D) on N tokens                 2·B·N·(C_in·patch)·D
  time embed  two × (256 → D, D → D, D → 6D)                      2·B·2·(256·D + D² + 6D²)
  condition   encoder_states E → D on S tokens                     2·B·S·E·D
  per layer   self q, o: 2 × 2·B·N·D·H·d;  self k, v: 2 × 2·B·N·D·G·d
              self attention: 4·B·H·d·P, P = pairs (i, j) a query attends (N² full; the ±window band
              for sliding layers, counted exactly)
              cross q, o: 2 × 2·B·N·D·H·d;  cross k, v (on S): 2 × 2·B·S·D·G·d;  cross attention 4·B·H·d·N·S
              MLP gate, up, down: 3 × 2·B·N·D·I
  proj_out    transposed conv (D → 64 · patch) on N tokens        2·B·N·D·64·patch
Norms, RoPE, softmax and element-wise work are left out (a few % at most). The ONNX DiT graph
recomputes the cross-attention K/V every call; the PyTorch reference caches them per render
(`cross_kv=False` drops them from the count).
"""

from __future__ import annotations

import math
from typing import Mapping


def band_pairs(n: int, window: int | None) -> int:
    """Number of (query, key) pairs with |i − j| ≤ window among n tokens (n² when window is None)."""
    if window is None or window >= n - 1:
        return n * n
    w = window
    # Row i sees min(i + w, n − 1) − max(i − w, 0) + 1 keys: the full 2w + 1 except the w rows at each edge.
    edge = sum(min(i + w, n - 1) + 1 for i in range(w))
    return (n - 2 * w) * (2 * w + 1) + 2 * edge


def _get(cfg, name):
    return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)


def layer_windows(cfg) -> list[int | None]:
    types = list(_get(cfg, "layer_types"))[: _get(cfg, "num_hidden_layers")]
    sliding = _get(cfg, "use_sliding_window")
    return [_get(cfg, "sliding_window") if sliding and t == "sliding_attention" else None for t in types]


def dit_flops(cfg, batch: int, frames: int, encoder_tokens: int, cross_kv: bool = True) -> dict[str, int]:
    """FLOPs of one DiT forward by part; `total` is their sum. `cfg` is an AceStepConfig or the manifest's dict."""
    b, s = batch, encoder_tokens
    d_model, inter = _get(cfg, "hidden_size"), _get(cfg, "intermediate_size")
    heads, kv_heads, hd = _get(cfg, "num_attention_heads"), _get(cfg, "num_key_value_heads"), _get(cfg, "head_dim")
    patch, c_in = _get(cfg, "patch_size"), _get(cfg, "in_channels")
    enc, out_ch = _get(cfg, "encoder_hidden_size"), _get(cfg, "audio_acoustic_hidden_dim")
    n = math.ceil(frames / patch)
    q_o = 2 * (2 * b * n * d_model * heads * hd)
    parts = {
        "proj_in": 2 * b * n * c_in * patch * d_model,
        "time_embed": 2 * b * 2 * (256 * d_model + d_model * d_model + 6 * d_model * d_model),
        "condition_embedder": 2 * b * s * enc * d_model,
        "self_proj": 0, "self_attention": 0, "cross_proj": 0, "cross_attention": 0, "mlp": 0,
        "proj_out": 2 * b * n * d_model * out_ch * patch,
    }
    for window in layer_windows(cfg):
        parts["self_proj"] += q_o + 2 * (2 * b * n * d_model * kv_heads * hd)
        parts["self_attention"] += 4 * b * heads * hd * band_pairs(n, window)
        parts["cross_proj"] += q_o + (2 * (2 * b * s * d_model * kv_heads * hd) if cross_kv else 0)
        parts["cross_attention"] += 4 * b * heads * hd * n * s
        parts["mlp"] += 3 * (2 * b * n * d_model * inter)
    if not cross_kv:
        parts["condition_embedder"] = 0
    parts["total"] = sum(parts.values())
    return parts


def step_flops(cfg, calls: list[tuple[int, float]], frames: int, encoder_tokens: int, cross_kv: bool = True) -> int:
    """Total FLOPs of a list of (batch, seconds) DiT calls."""
    cache: dict[int, int] = {}
    total = 0
    for batch, _ in calls:
        if batch not in cache:
            cache[batch] = dit_flops(cfg, batch, frames, encoder_tokens, cross_kv)["total"]
        total += cache[batch]
    return total
