"""Audio tokenizer (attention pooler + FSQ) and detokenizer: 25 Hz latents ↔ 5 Hz codes.

As `AceStepAudioTokenizer`, `AttentionPooler` and `AudioTokenDetokenizer` in
ace-step/ACE-Step-1.5 acestep/models/xl_base/modeling_acestep_v15_xl_base.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import AceStepConfig
from .layers import EncoderStack


class FSQ(nn.Module):
    """ResidualFSQ(dim, levels, num_quantizers=1) as vector-quantize-pytorch ≥ 1.27.15 computes it.

    That library version (the official requirement) builds its FSQ layers with `preserve_symmetry=True`
    and a hard-clamped bound, after a soft clamp tanh(z/c)·c with c = 1 + 1/(L−1). Older
    vector-quantize-pytorch versions had an asymmetric `bound`/round; the library code is what the
    model was trained with, and `tests/test_fsq.py` checks us against it. Runs in fp32 whatever the
    module dtype, as the official tokenizer forces.
    """

    def __init__(self, dim: int, levels: tuple[int, ...], num_quantizers: int = 1):
        super().__init__()
        if num_quantizers != 1:
            raise ValueError(f"only one FSQ quantizer is supported (got fsq_input_num_quantizers={num_quantizers})")
        self.levels = tuple(int(v) for v in levels)
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)
        self.basis = tuple(math.prod(self.levels[:i]) for i in range(len(self.levels)))

    # Level/basis constants are made on demand rather than kept as buffers: buffers built on the
    # meta device would stay there after a meta-device load.
    def _levels_on(self, ref: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.levels, dtype=torch.int64, device=ref.device)

    def _basis_on(self, ref: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.basis, dtype=torch.int64, device=ref.device)

    def level_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Projected features [.., n_levels] → integer level per dimension in [0, L−1]."""
        steps = (self._levels_on(z) - 1).to(z.dtype)
        z = torch.tanh(z / (1 + 1 / steps)) * (1 + 1 / steps)  # soft clamp before the residual layer
        return torch.floor(steps * (z.clamp(-1.0, 1.0) + 1) / 2 + 0.5)

    def codes_from_levels(self, levels: torch.Tensor) -> torch.Tensor:
        return levels * (2.0 / (self._levels_on(levels) - 1).to(levels.dtype)) - 1.0

    def indices_to_levels(self, indices: torch.Tensor) -> torch.Tensor:
        return ((indices[..., None] // self._basis_on(indices)) % self._levels_on(indices)).to(torch.float32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [.., dim] → (quantized [.., dim] in x's dtype, indices [..] int64 in 0..prod(levels)−1)."""
        dtype = x.dtype
        z = nn.functional.linear(x.float(), self.project_in.weight.float(), self.project_in.bias.float())
        levels = self.level_indices(z)
        indices = (levels.to(torch.int64) * self._basis_on(levels)).sum(-1)
        codes = self.codes_from_levels(levels)
        quantized = nn.functional.linear(codes, self.project_out.weight.float(), self.project_out.bias.float())
        return quantized.to(dtype), indices

    def from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Audio-code ids (clamped to the codebook) → quantized vectors [.., dim], in fp32."""
        codebook = math.prod(self.levels)
        codes = self.codes_from_levels(self.indices_to_levels(indices.clamp(0, codebook - 1)))
        return nn.functional.linear(codes, self.project_out.weight.float(), self.project_out.bias.float())


class AttentionPooler(EncoderStack):
    """Each window of `pool_window_size` frames + a learned CLS token → one pooled vector."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__(cfg, cfg.hidden_size, cfg.num_attention_pooler_hidden_layers)
        self.special_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, p, d = x.shape
        x = self.embed_tokens(x)
        x = torch.cat([self.special_token.expand(b, n, 1, d), x], dim=2).reshape(b * n, p + 1, d)
        return self.run_layers(x, all_layers=True)[:, 0, :].reshape(b, n, d)


class AudioTokenizer(nn.Module):
    """Latents [B, T, 64] (T a multiple of the pool window) → quantized [B, T/5, D] and indices [B, T/5]."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__()
        self.pool_window_size = cfg.pool_window_size
        self.audio_acoustic_proj = nn.Linear(cfg.audio_acoustic_hidden_dim, cfg.hidden_size)
        self.attention_pooler = AttentionPooler(cfg)
        self.quantizer = FSQ(cfg.fsq_dim, cfg.fsq_input_levels, cfg.fsq_input_num_quantizers)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c = latents.shape
        if t % self.pool_window_size:
            raise ValueError(
                f"latent length {t} is not a multiple of the pool window {self.pool_window_size}; "
                "pad with silence-latent frames first (see pad_to_pool_window)"
            )
        x = latents.reshape(b, t // self.pool_window_size, self.pool_window_size, c)
        pooled = self.attention_pooler(self.audio_acoustic_proj(x))
        return self.quantizer(pooled)


def pad_to_pool_window(latents: torch.Tensor, silence: torch.Tensor, window: int) -> torch.Tensor:
    """Right-pad [B, T, 64] with the first silence-latent frames up to a multiple of `window` (official `tokenize`)."""
    pad = (-latents.shape[1]) % window
    if not pad:
        return latents
    fill = silence[:1, :pad].to(latents.dtype).expand(latents.shape[0], -1, -1)
    return torch.cat([latents, fill], dim=1)


class AudioDetokenizer(EncoderStack):
    """Quantized [B, T5, D] → latents [B, 5·T5, 64]: each token expanded by learned per-slot tokens."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__(cfg, cfg.hidden_size, cfg.num_attention_pooler_hidden_layers)
        self.pool_window_size = cfg.pool_window_size
        self.special_tokens = nn.Parameter(torch.zeros(1, cfg.pool_window_size, cfg.hidden_size))
        self.proj_out = nn.Linear(cfg.hidden_size, cfg.audio_acoustic_hidden_dim)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        b, n, d = quantized.shape
        p = self.pool_window_size
        x = self.embed_tokens(quantized)[:, :, None, :] + self.special_tokens[:, None, :, :]
        x = self.run_layers(x.reshape(b * n, p, d), all_layers=True)
        return self.proj_out(x).reshape(b, n * p, -1)
