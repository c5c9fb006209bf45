"""PyTorch reference text2music pipeline: the baseline the ONNX runtime is compared with.

Prompts → tokenizer → Qwen3 text encoder → condition encoder → Euler sampling with APG / CFG / ADG
and the CFG interval → NaN/zero guard → tiled VAE decode → length fit → anti-clip → −1 dBFS peak,
as the official code (ace-step/ACE-Step-1.5: acestep/models/xl_base/modeling_acestep_v15_xl_base.py
`generate_audio`, acestep/core/generation/handler/generate_music_decode.py, acestep/inference.py
`generate_music`) with the decisions of docs/design.md ("Decisions a user can see").

Decisions of this module:
- Schedule, guidance and the Euler state run in torch (models/reference_sampling.py), never through
  runtime/sampler.py (docs/design.md, "One render"), so runtime-vs-reference parity compares two
  implementations. Only the prompt strings and tokenizer setup (runtime/prompts.py, torch-free) are shared.
- Precision: the networks run in the chosen dtype (fp32/fp16/bf16); the condition encoder stays
  fp32 by default (its lyric encoder overflows fp16: docs/design.md, "Precision"). The schedule, the
  state x and the Euler update are fp32; guidance math is float64 (the official code does the APG
  projection in float64 and the rest in the model dtype, so this is at least as accurate).
- Outside the CFG interval (or with cfg_scale <= 1) the DiT runs on the conditional branch only
  (batch 1) and the APG momentum is untouched. The interval is on progress p = 1 − t with a 1e-6
  slack on both bounds, the same reading as the runtime, so both guide the same steps.
- Output length: the model makes T = max(128, int(round(d, 1)·48000)//1920) frames (T·1920
  samples); the audio is then cut or zero-padded to round(d·48000) samples, so a render lasts
  exactly the requested duration. The fit happens before anti-clip and normalisation so the
  returned peak is exactly −1 dBFS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from acestep_edge.runtime.prompts import (
    PromptTokenizer,
    caption_prompt,
    format_metas,
    lyric_prompt,
    task_instruction,
)

from .checkpoint import load_checkpoint
from .reference_sampling import (GUIDANCE_KINDS, Step, check_integer, check_interval, check_number, euler_sample,
                                 schedule)
from .vae import tiled_decode

SAMPLE_RATE = 48000
HOP = 1920
MIN_FRAMES = 128
MAX_DURATION = 600.0
LATENT_CHANNELS = 64
CHUNK_MASK_VALUE = 1.0  # full-span tasks use 1.0, not the official 2.0 "auto" sentinel (docs/design.md)

PEAK_TARGET = 10.0 ** (-1.0 / 20.0)  # −1 dBFS
SILENT_PEAK = 1e-6


class RenderError(RuntimeError):
    """Sampling produced unusable latents (NaN/Inf or all zeros); nothing should be written."""


@dataclass(frozen=True)
class ReferenceParams:
    """One text2music render. Durations below 10 s are allowed here (tests); T never drops below 128."""

    caption: str
    duration: float
    lyrics: str = ""
    steps: int = 50
    cfg_scale: float = 7.0
    guidance: str = "apg"
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    shift: float = 3.0
    bpm: int | float | None = None
    key_scale: str | None = None
    time_signature: str | int | None = None
    language: str | None = "en"
    vae_chunk: int = 512
    vae_overlap: int = 64
    normalize: bool = True
    chunk_mask: float = CHUNK_MASK_VALUE

    def __post_init__(self) -> None:
        if not isinstance(self.caption, str):
            raise ValueError(f"caption must be a string, got {type(self.caption).__name__}")
        if self.lyrics is not None and not isinstance(self.lyrics, str):
            raise ValueError(f"lyrics must be a string, got {type(self.lyrics).__name__}")
        check_number("duration", self.duration, low=0.0, high=MAX_DURATION, low_open=True)
        check_integer("steps", self.steps, 1)
        check_number("cfg_scale", self.cfg_scale)
        if self.guidance not in GUIDANCE_KINDS:
            raise ValueError(f"unknown guidance {self.guidance!r}; use one of: {', '.join(GUIDANCE_KINDS)}")
        check_interval(self.cfg_interval)
        check_number("shift", self.shift, low=0.0, low_open=True)
        check_integer("vae_chunk", self.vae_chunk, 1)
        check_integer("vae_overlap", self.vae_overlap, 0)
        check_number("chunk_mask", self.chunk_mask)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")

    @property
    def frames(self) -> int:
        return latent_frames(self.duration)

    @property
    def samples(self) -> int:
        return output_samples(self.duration)


def latent_frames(duration: float) -> int:
    """T = max(128, int(round(d, 1)·48000)//1920) (docs/design.md, "Decisions a user can see")."""
    return max(MIN_FRAMES, int(round(duration, 1) * SAMPLE_RATE) // HOP)


def output_samples(duration: float) -> int:
    """Samples per channel of the returned audio: the requested duration, rounded to a sample."""
    return int(round(duration * SAMPLE_RATE))


# -- after sampling -----------------------------------------------------------------------------

def check_latents(latents: torch.Tensor) -> None:
    """NaN/Inf or all-zero latents mean a failed render (the official generate_music_decode.py guards)."""
    if not bool(torch.isfinite(latents).all()):
        raise RenderError("sampling produced NaN/Inf latents (numerical overflow; try float32 or bfloat16)")
    if not bool(latents.abs().amax() > 0):
        raise RenderError("sampling produced all-zero latents")


def fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Cut, or zero-pad at the end, [C, N] audio to exactly `samples` per channel."""
    if audio.shape[-1] >= samples:
        return audio[..., :samples]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, samples - audio.shape[-1])])


def finish_audio(audio: np.ndarray, samples: int, normalize: bool = True) -> np.ndarray:
    """Fit the length, anti-clip (divide by the peak if > 1), then peak-normalise to −1 dBFS unless silent."""
    out = fit_length(np.asarray(audio, dtype=np.float64), samples)
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > 1.0:
        out, peak = out / peak, 1.0
    if normalize and peak >= SILENT_PEAK:
        out = out * (PEAK_TARGET / peak)
    return out.astype(np.float32)


# -- the pipeline -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptInfo:
    caption_prompt: str
    lyric_prompt: str
    caption_ids: np.ndarray
    lyric_ids: np.ndarray
    caption_truncated: bool
    lyric_truncated: bool


@dataclass(frozen=True)
class ReferenceResult:
    latents: np.ndarray  # [1, T, 64] float32, before decode
    audio: np.ndarray  # [2, round(duration·48000)] float32
    sample_rate: int
    prompts: PromptInfo


def _tile_frames(latent: torch.Tensor, frames: int) -> torch.Tensor:
    """First `frames` frames of [1, N, C], repeating it when N < frames (official `_get_silence_latent_slice`)."""
    n = latent.shape[1]
    if n < frames:
        latent = latent.repeat(1, math.ceil(frames / n), 1)
    return latent[:, :frames]


class ReferencePipeline:
    """A loaded checkpoint plus the text2music render; weights are never modified after loading."""

    def __init__(self, loaded, device: str | torch.device = "cpu") -> None:
        if loaded.acestep is None or loaded.text_encoder is None or loaded.vae is None:
            raise ValueError("the reference pipeline needs the acestep, text and vae components")
        self.device = torch.device(device)
        self.preset = loaded.preset
        self.acestep = loaded.acestep.eval()
        self.text_encoder = loaded.text_encoder.eval()
        self.vae = loaded.vae.eval()
        self.silence = loaded.silence_latent.to(self.device, torch.float32)
        self.tokenizer = PromptTokenizer.from_file(loaded.tokenizer_json)

    @classmethod
    def from_checkpoint(cls, root: str | Path, dtype: torch.dtype = torch.float32, layout: str = "auto",
                        device: str | torch.device = "cpu",
                        encoder_dtype: torch.dtype = torch.float32) -> "ReferencePipeline":
        """Load a checkpoint; DiT, text encoder and VAE run in `dtype`, the condition encoder in `encoder_dtype`."""
        for name, value in (("dtype", dtype), ("encoder_dtype", encoder_dtype)):
            if value not in (torch.float32, torch.float16, torch.bfloat16):
                raise ValueError(f"{name} must be torch.float32, torch.float16 or torch.bfloat16, got {value!r}")
        # Load once at full precision when parts differ, so the encoder gets the stored weights unrounded.
        loaded = load_checkpoint(root, layout=layout, dtype=dtype if dtype == encoder_dtype else torch.float32)
        model = loaded.acestep
        for part in (model.decoder, model.tokenizer, model.detokenizer, loaded.text_encoder, loaded.vae):
            part.to(device=device, dtype=dtype)
        model.encoder.to(device=device, dtype=encoder_dtype)
        model.null_condition_emb.data = model.null_condition_emb.data.to(device=device, dtype=encoder_dtype)
        return cls(loaded, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.acestep.decoder.condition_embedder.weight.dtype

    @property
    def encoder_dtype(self) -> torch.dtype:
        return self.acestep.encoder.text_projector.weight.dtype

    def build_prompts(self, params: ReferenceParams) -> tuple[str, str]:
        """Caption prompt (text2music instruction, caption, metas) and lyric prompt (runtime/prompts.py)."""
        metas = format_metas(params.bpm, params.time_signature, params.key_scale, params.duration)
        caption = caption_prompt(task_instruction("text2music"), params.caption, metas)
        return caption, lyric_prompt(params.language, params.lyrics)

    @torch.inference_mode()
    def encode_prompts(self, params: ReferenceParams) -> tuple[torch.Tensor, PromptInfo]:
        """Encoder states [1, S, D] (condition-encoder dtype) for the prompts, and what was tokenized."""
        caption, lyrics = self.build_prompts(params)
        cap, lyr = self.tokenizer.encode_caption(caption), self.tokenizer.encode_lyrics(lyrics)
        cap_ids = torch.from_numpy(cap.ids)[None].to(self.device)
        lyr_ids = torch.from_numpy(lyr.ids)[None].to(self.device)
        enc_dtype = self.encoder_dtype
        text_states = self.text_encoder(cap_ids).to(enc_dtype)
        lyric_embeds = self.text_encoder.embed(lyr_ids).to(enc_dtype)  # lyrics are table lookups only
        refer = _tile_frames(self.silence, self.preset.dit.timbre_fix_frame).to(enc_dtype)
        states, _ = self.acestep.encoder(text_states, self._all_valid(cap_ids), lyric_embeds,
                                         self._all_valid(lyr_ids), refer)
        info = PromptInfo(caption, lyrics, cap.ids, lyr.ids, cap.truncated, lyr.truncated)
        return states, info

    def _all_valid(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ones(ids.shape, dtype=torch.bool, device=self.device)  # batch 1: no padding

    def context(self, frames: int, chunk_mask: float = CHUNK_MASK_VALUE) -> torch.Tensor:
        """[1, T, 128] = [silence src latents | chunk mask (1.0 by default) on 64 channels] in the DiT dtype."""
        src = _tile_frames(self.silence, frames)
        mask = torch.full_like(src, float(chunk_mask))
        return torch.cat([src, mask], dim=-1).to(self.dtype)

    def _check_noise(self, noise, frames: int) -> torch.Tensor:
        noise = torch.as_tensor(noise)
        expected = (1, frames, LATENT_CHANNELS)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape {expected} for this duration, got {tuple(noise.shape)}")
        if not noise.is_floating_point() or not bool(torch.isfinite(noise).all()):
            raise ValueError("noise must be a finite floating-point tensor")
        return noise.to(self.device, torch.float32)

    @torch.inference_mode()
    def sample(self, params: ReferenceParams, noise, encoder_states: torch.Tensor,
               callback: Callable[[Step], None] | None = None) -> torch.Tensor:
        """Euler sampling from explicit noise [1, T, 64]; returns fp32 latents [1, T, 64] on the device."""
        x = self._check_noise(noise, params.frames)
        decoder, dtype = self.acestep.decoder, self.dtype
        ctx1 = self.context(params.frames, params.chunk_mask)
        enc = encoder_states.to(self.device)
        # Cross-attention K/V are constant over a render (the official KV cache): project them once.
        kv1 = decoder.cross_kv(decoder.embed_condition(enc.to(dtype)))
        kv2 = None
        if params.cfg_scale > 1.0:
            null = self.acestep.null_condition(enc)
            kv_null = decoder.cross_kv(decoder.embed_condition(null.to(dtype)))
            # Built from kv1 so the conditional half is bit-identical to the batch-1 branch.
            kv2 = [(torch.cat([k, kn]), torch.cat([v, vn])) for (k, v), (kn, vn) in zip(kv1, kv_null)]
        ctx2 = ctx1.expand(2, -1, -1)

        def velocity(state: torch.Tensor, t: float, batch2: bool):
            if batch2:
                xin = state.to(dtype).expand(2, -1, -1)
                tt = torch.full((2,), t, dtype=torch.float32, device=self.device)
                v_cond, v_null = decoder(xin, tt, None, ctx2, cross_kv=kv2).float().chunk(2)
                return v_cond, v_null
            tt = torch.full((1,), t, dtype=torch.float32, device=self.device)
            return decoder(state.to(dtype), tt, None, ctx1, cross_kv=kv1).float(), None

        sigmas = schedule(params.steps, params.shift)
        return euler_sample(x, sigmas, velocity, params.guidance, params.cfg_scale, params.cfg_interval, callback)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, chunk: int = 512, overlap: int = 64) -> np.ndarray:
        """Guarded, tiled VAE decode of [1, T, 64] → float32 audio [2, T·1920] (not yet fitted or normalised)."""
        latents = torch.as_tensor(latents)
        if latents.dim() != 3 or latents.shape[0] != 1 or latents.shape[-1] != LATENT_CHANNELS:
            raise ValueError(f"latents must be [1, T, {LATENT_CHANNELS}], got shape {tuple(latents.shape)}")
        check_latents(latents)
        z = latents.to(self.device, next(self.vae.parameters()).dtype).transpose(1, 2)
        audio = tiled_decode(self.vae, z, chunk, overlap)[0]
        return audio.float().cpu().numpy()

    def render(self, params: ReferenceParams, noise, callback: Callable[[Step], None] | None = None
               ) -> ReferenceResult:
        """The whole text2music render from explicit initial noise."""
        states, info = self.encode_prompts(params)
        latents = self.sample(params, noise, states, callback)
        check_latents(latents)
        raw = self.decode(latents, params.vae_chunk, params.vae_overlap)
        audio = finish_audio(raw, params.samples, params.normalize)
        return ReferenceResult(latents.float().cpu().numpy(), audio, SAMPLE_RATE, info)
