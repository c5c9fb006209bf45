"""The DiT checkpoint's module tree: decoder, condition encoder, audio tokenizer/detokenizer, null embedding."""

from __future__ import annotations

import torch
from torch import nn

from .audio_tokens import AudioDetokenizer, AudioTokenizer
from .condition import ConditionEncoder
from .config import AceStepConfig
from .dit import DiT


class AceStepModel(nn.Module):
    """Mirrors the parameters of `AceStepConditionGenerationModel.__init__`
    (ace-step/ACE-Step-1.5 acestep/models/xl_base/modeling_acestep_v15_xl_base.py):
    `decoder.*`, `encoder.*`, `tokenizer.*`, `detokenizer.*`, `null_condition_emb`.

    The encoder, tokenizer and detokenizer are built from the encoder view of the config (2048 wide
    for XL) while the decoder is 2560 wide.
    """

    def __init__(self, cfg: AceStepConfig):
        super().__init__()
        self.cfg = cfg
        enc_cfg = cfg.encoder_view()
        self.decoder = DiT(cfg)
        self.encoder = ConditionEncoder(enc_cfg)
        self.tokenizer = AudioTokenizer(enc_cfg)
        self.detokenizer = AudioDetokenizer(enc_cfg)
        self.null_condition_emb = nn.Parameter(torch.zeros(1, 1, cfg.encoder_hidden_size))

    def null_condition(self, encoder_states: torch.Tensor) -> torch.Tensor:
        """The unconditional branch: the learned vector broadcast over every encoder position
        (official `generate_audio`: `null_condition_emb.expand_as(encoder_hidden_states)`)."""
        return self.null_condition_emb.to(encoder_states.dtype).expand_as(encoder_states)

    def audio_hints(self, latents: torch.Tensor) -> torch.Tensor:
        """Cover 'LM hints': tokenize → detokenize, cropped to the input length (latents padded by caller)."""
        quantized, _ = self.tokenizer(latents)
        return self.detokenizer(quantized)[:, : latents.shape[1]]
