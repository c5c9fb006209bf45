"""Condition encoder: text projector, lyric encoder, timbre encoder and sequence packing.

As `AceStepConditionEncoder` and `pack_sequences` in
ace-step/ACE-Step-1.5 acestep/models/xl_base/modeling_acestep_v15_xl_base.py.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import AceStepConfig
from .layers import EncoderStack


def pack_sequences(a, b, mask_a, mask_b):
    """Concatenate along time, then move valid tokens first (stable), as the official `pack_sequences`.

    With no padding this is plain concatenation, which is what the exported batch-1 graph relies on.
    """
    hidden = torch.cat([a, b], dim=1)
    mask = torch.cat([mask_a, mask_b], dim=1).to(torch.long)
    order = mask.argsort(dim=1, descending=True, stable=True)
    hidden = torch.gather(hidden, 1, order[..., None].expand_as(hidden))
    lengths = mask.sum(dim=1, keepdim=True)
    new_mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths
    return hidden, new_mask


class LyricEncoder(EncoderStack):
    """Linear(text_hidden_dim→D) + bidirectional layers over the Qwen3 token *embeddings* of the lyrics."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__(cfg, cfg.text_hidden_dim, cfg.num_lyric_encoder_hidden_layers)

    def forward(self, lyric_embeds: torch.Tensor, lyric_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.run_layers(self.embed_tokens(lyric_embeds), lyric_mask)


class TimbreEncoder(EncoderStack):
    """Reference latents [N, frames, 64] → CLS embedding [N, D] (a learned token prepended, then pooled)."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__(cfg, cfg.timbre_hidden_dim, cfg.num_timbre_encoder_hidden_layers)
        self.special_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))

    def forward(self, refer_latents: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(refer_latents)
        x = torch.cat([self.special_token.expand(x.shape[0], 1, -1), x], dim=1)
        return self.run_layers(x)[:, 0, :]


def unpack_references(cls_tokens: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, D] CLS tokens with their batch index `order` [N] → [B, max_refs, D] and a validity mask.

    References keep their original order within a batch item (official `unpack_timbre_embeddings`).
    """
    batch = int(order.max().item()) + 1
    counts = torch.bincount(order, minlength=batch)
    out = cls_tokens.new_zeros(batch, int(counts.max().item()), cls_tokens.shape[-1])
    mask = torch.zeros(batch, out.shape[1], dtype=torch.long, device=cls_tokens.device)
    slot = [0] * batch
    for i, b in enumerate(order.tolist()):
        out[b, slot[b]] = cls_tokens[i]
        mask[b, slot[b]] = 1
        slot[b] += 1
    return out, mask


class ConditionEncoder(nn.Module):
    """Packs [lyrics | timbre | projected text] into the DiT's cross-attention sequence."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__()
        self.text_projector = nn.Linear(cfg.text_hidden_dim, cfg.hidden_size, bias=False)
        self.lyric_encoder = LyricEncoder(cfg)
        self.timbre_encoder = TimbreEncoder(cfg)

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        lyric_embeds: torch.Tensor,
        lyric_mask: torch.Tensor,
        refer_latents: torch.Tensor,
        refer_order: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns encoder states [B, S, D] and their mask [B, S] (True = valid).

        `refer_order[n]` is the batch item of reference n; None means one reference per item.
        """
        text = self.text_projector(text_states)
        lyrics = self.lyric_encoder(lyric_embeds, lyric_mask)
        cls_tokens = self.timbre_encoder(refer_latents)
        if refer_order is None:
            timbre, timbre_mask = cls_tokens[:, None, :], torch.ones(cls_tokens.shape[0], 1, dtype=torch.long)
        else:
            timbre, timbre_mask = unpack_references(cls_tokens, refer_order)
        states, mask = pack_sequences(lyrics, timbre, lyric_mask, timbre_mask.to(lyric_mask.device))
        return pack_sequences(states, text, mask, text_mask)
