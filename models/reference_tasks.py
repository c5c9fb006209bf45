"""PyTorch reference for the editing tasks (cover, repaint, extract, lego, complete), the timbre
reference and the negative prompt: the baseline the runtime's task path is compared with.

Written from the official code (ace-step/ACE-Step-1.5 at commit 53067ab: acestep/core/generation/
handler/padding_utils.py, conditioning_masks.py, conditioning_target.py, conditioning_text.py,
prompt_utils.py, io_audio.py, generate_music.py, generate_music_decode.py,
repaint_waveform_splice.py; acestep/models/xl_base/modeling_acestep_v15_xl_base.py generate_audio),
with its default chunk_mask_mode "auto" (a chunk mask of 1.0 everywhere), independently of
runtime/tasks.py and runtime/sampler.py: only the prompt strings and the tokenizer are shared.
Explicit noises stand in for every random draw (initial noise, the source and reference VAE
posterior samples); the reference segments use the middle of each random offset range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from acestep_edge.runtime.prompts import caption_prompt, format_metas, lyric_prompt, task_instruction

from .audio_tokens import pad_to_pool_window
from .reference import HOP, MIN_FRAMES, SAMPLE_RATE, ReferencePipeline, _tile_frames, check_latents, finish_audio
from .reference_sampling import euler_sample, schedule
from .vae import OobleckVae, tiled_encode


@dataclass(frozen=True)
class TaskParams:
    task: str  # text2music, cover, repaint, extract, lego, complete
    caption: str
    source: np.ndarray | None = None  # [2, n] float32 at 48 kHz
    duration: float | None = None  # text2music only
    lyrics: str = ""
    language: str = "en"
    steps: int = 8
    cfg_scale: float = 7.0
    guidance: str = "apg"
    shift: float = 3.0
    window: tuple[float | None, float | None] | None = None  # repaint / lego (start, end); end -1 = source end
    track_name: str | None = None
    track_classes: tuple[str, ...] = ()
    cover_scale: float | None = None  # coverConditioningScale
    strength: float | None = None
    repaint_mode: str = "balanced"
    reference: np.ndarray | None = None  # [2, n] timbre reference
    negative: str | None = None  # negative caption (useNegativePrompt)
    encode_window: float = 30.0
    encode_overlap: float = 2.0
    chunk_mask: float = 1.0


def _posterior(vae: OobleckVae, audio: np.ndarray, noise: np.ndarray, window: float, overlap: float) -> torch.Tensor:
    """Tiled encode of the whole [2, n] audio (a partial last hop included, as the official
    vae_encode), sampled with explicit noise [1, n // hop, 64] → [1, n // hop, 64]."""
    x = torch.from_numpy(np.ascontiguousarray(audio))[None].float()
    mean, scale = tiled_encode(vae, x, window, overlap)
    eps = torch.from_numpy(noise).float().transpose(1, 2)
    return OobleckVae.sample_latents(mean, scale, eps).transpose(1, 2)


def _segments(audio: np.ndarray) -> np.ndarray:
    """30 s of reference: audio repeated to >= 30 s, one 10-s piece from the middle of each third's range."""
    need, seg = 30 * SAMPLE_RATE, 10 * SAMPLE_RATE
    if audio.shape[-1] < need:
        audio = np.concatenate([audio] * math.ceil(need / audio.shape[-1]), axis=-1)
    n = audio.shape[-1]
    third = n // 3
    offsets = (max(0, third - seg) // 2, third + max(0, third - seg) // 2, 2 * third + max(0, n - 2 * third - seg) // 2)
    return np.concatenate([audio[:, o:o + seg] for o in offsets], axis=-1)


def _ramps(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Float weights: mask (1 inside), with linear ramps of `width` elements just outside it."""
    soft = mask.float().clone()
    idx = torch.nonzero(mask).flatten()
    if width <= 0 or idx.numel() == 0 or bool(mask.all()):
        return soft
    left, right = int(idx[0]), int(idx[-1]) + 1
    lo, hi = max(left - width, 0), min(right + width, mask.numel())
    if left > lo:
        soft[lo:left] = torch.linspace(0, 1, left - lo + 2)[1:-1]
    if hi > right:
        soft[right:hi] = torch.linspace(1, 0, hi - right + 2)[1:-1]
    return soft


class TaskReference:
    """Editing tasks on a loaded ReferencePipeline (fp32, CPU)."""

    def __init__(self, pipe: ReferencePipeline):
        self.pipe = pipe
        self.model = pipe.acestep
        self._encoded: dict = {}  # posterior samples by (audio, noise, window) bytes: encoding is the slow part

    def _posterior(self, audio: np.ndarray, noise: np.ndarray, p: "TaskParams") -> torch.Tensor:
        key = (audio.shape, hash(audio.tobytes()), hash(noise.tobytes()), p.encode_window, p.encode_overlap)
        if key not in self._encoded:
            self._encoded[key] = _posterior(self.pipe.vae, audio, noise, p.encode_window, p.encode_overlap)
        return self._encoded[key].clone()

    def _caption_ids(self, instruction: str, p: TaskParams, seconds: float, caption: str) -> torch.Tensor:
        text = caption_prompt(instruction, caption, format_metas(None, None, None, seconds))
        return torch.from_numpy(self.pipe.tokenizer.encode_caption(text).ids)[None]

    def _caption_length(self, instruction: str, p: TaskParams, seconds: float) -> int:
        return self._caption_ids(instruction, p, seconds, p.caption).shape[1]

    @torch.inference_mode()
    def _encode(self, instruction: str, p: TaskParams, seconds: float, refer: torch.Tensor, caption: str,
                pad_to: int | None = None):
        """Condition states; `pad_to` pads (pad id, mask 0) or truncates the caption ids to that length,
        as conditioning_text.py does to the non-cover caption with `_pad_sequences`."""
        cap_ids = self._caption_ids(instruction, p, seconds, caption)
        cap_mask = torch.ones(cap_ids.shape, dtype=torch.bool)
        if pad_to is not None:
            # F.pad with a negative amount truncates, as the official _pad_sequences does.
            extra = pad_to - cap_ids.shape[1]
            cap_ids = torch.nn.functional.pad(cap_ids, (0, extra), value=self.pipe.tokenizer.pad_id)
            cap_mask = torch.nn.functional.pad(cap_mask, (0, extra), value=False)
        lyr_ids = torch.from_numpy(self.pipe.tokenizer.encode_lyrics(lyric_prompt(p.language, p.lyrics)).ids)[None]
        # The text encoder runs on the padded ids without a mask (infer_text_embeddings); the pads'
        # states follow the valid text in the packed sequence, and the DiT attends to them.
        states, _ = self.model.encoder(self.pipe.text_encoder(cap_ids), cap_mask,
                                       self.pipe.text_encoder.embed(lyr_ids),
                                       torch.ones(lyr_ids.shape, dtype=torch.bool), refer)
        return states

    def _branch(self, instruction, p, seconds, refer, pad_to: int | None = None):
        cond = self._encode(instruction, p, seconds, refer, p.caption, pad_to)
        null = (self._encode(instruction, p, seconds, refer, p.negative) if p.negative is not None
                else self.model.null_condition(cond))
        return cond, null

    @torch.inference_mode()
    def render(self, p: TaskParams, noise: np.ndarray, source_noise: np.ndarray | None = None,
               reference_noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(latents [1, T, 64], audio [2, samples]) of one render from explicit noises."""
        silence = self.pipe.silence
        # Source: outpainting zero pads, encode, then silence frames up to at least 128.
        window = None
        # generate_music defaults repainting_start=0.0, repainting_end=None: repaint and lego always
        # have a range, the whole source when none is given.
        span = p.window if p.window is not None or p.task not in ("repaint", "lego") else (0.0, None)
        if p.source is not None:
            audio = p.source
            seconds = audio.shape[-1] / SAMPLE_RATE
            if span is not None:
                start = 0.0 if span[0] is None else span[0]
                end = seconds if span[1] is None or span[1] < 0 else span[1]
                left, right = max(0.0, -start), max(0.0, end - seconds)
                audio = np.concatenate([np.zeros((2, int(left * SAMPLE_RATE)), np.float32), audio,
                                        np.zeros((2, int(right * SAMPLE_RATE)), np.float32)], axis=-1)
                window = (start + left, end + left)
            raw = self._posterior(audio, source_noise, p)
            frames = max(MIN_FRAMES, raw.shape[1])
            sil = _tile_frames(silence, frames)
            # conditioning_target.py pads with the silence latent's FIRST frames, not the aligned ones.
            raw = torch.cat([raw, _tile_frames(silence, frames - raw.shape[1])], dim=1)
            out_samples = audio.shape[-1]
        else:
            seconds = p.duration
            frames = max(MIN_FRAMES, int(round(p.duration, 1) * SAMPLE_RATE) // HOP)
            sil = _tile_frames(silence, frames)
            out_samples = int(round(p.duration * SAMPLE_RATE))
        if p.reference is not None:
            refer = self._posterior(_segments(p.reference), reference_noise, p)
        else:
            refer = _tile_frames(silence, 750)

        instruction = task_instruction(p.task, p.track_name, p.track_classes)
        cond, null = self._branch(instruction, p, seconds, refer)
        src = sil.clone() if p.source is None else raw.clone()
        mask = torch.full((1, frames), p.chunk_mask)
        repaint = None
        if p.task == "cover":
            src = self.model.audio_hints(pad_to_pool_window(raw, silence, 5))[:, :frames]
        if window is not None:
            s = max(0, min(int(window[0] * SAMPLE_RATE // HOP), frames - 1))
            e = max(s + 1, min(int(window[1] * SAMPLE_RATE // HOP), frames))
            repaint = torch.zeros(frames, dtype=torch.bool)
            repaint[s:e] = True
            # chunk_mask_mode "auto" (the default) writes 2.0 into a bool mask: True, i.e. 1.0 on
            # every frame; the window's 0/1 mask is the non-default "explicit" mode.
            if p.task != "lego":
                src[:, s:e] = sil[:, s:e]
        branches = [(cond, null, src)]
        t = schedule(p.steps, p.shift)
        x = torch.from_numpy(noise).float()
        eps = x.clone()
        if p.strength is not None and (p.task in ("cover", "extract", "complete")
                                       or (p.task == "lego" and p.window is None)):
            # generate_audio's cover_noise_strength = 1 - strength (any task, from its src_latents):
            # the nearest schedule point to `strength`.
            values = t[:-1].tolist()
            k0 = min(range(len(values)), key=lambda i: abs(values[i] - p.strength))
            x = t[k0] * eps + (1 - t[k0]) * raw
            t = t[k0:]
        steps = t.numel() - 1
        switch = None
        if p.cover_scale is not None and p.cover_scale < 1.0:
            switch = int(steps * p.cover_scale)
            c2, n2 = self._branch(task_instruction("text2music"), p, seconds, refer,
                                  pad_to=self._caption_length(instruction, p, seconds))
            branches.append((c2, n2, sil.clone()))
        if repaint is not None:
            st = 0.5 if p.strength is None or (p.task == "lego" and p.window is None) else p.strength
            mode = p.repaint_mode
            ratio = {"aggressive": 0.0, "conservative": 1.0}.get(mode, 1.0 - st)
            cf = int(round(25 * ratio))
            wav_cf = 0.05 * ratio
        x = self._loop(x, eps, t, branches, switch, mask, p, raw if repaint is not None else None, repaint,
                       round(ratio * steps) if repaint is not None else 0)
        if repaint is not None and cf > 0:
            w = _ramps(repaint, cf)[None, :, None]
            x = w * x + (1 - w) * raw
        check_latents(x)
        wav = self.pipe.decode(x)
        peak = float(np.abs(wav).max())
        if peak > 1.0:  # generate_music_decode: divide by the peak BEFORE the splice
            wav = wav / peak
        if repaint is not None and mode != "aggressive":
            n = min(wav.shape[-1], audio.shape[-1])
            a, b = max(0, min(int(window[0] * SAMPLE_RATE), n)), None
            b = max(a, min(int(window[1] * SAMPLE_RATE), n))
            if not (a == 0 and b >= n):
                m = torch.zeros(n, dtype=torch.bool)
                m[a:b] = True
                w = _ramps(m, int(wav_cf * SAMPLE_RATE)).numpy()
                wav[:, :n] = w * wav[:, :n] + (1 - w) * audio[:, :n]
        return x.numpy(), finish_audio(wav, out_samples)

    def _loop(self, x, eps, t, branches, switch, mask, p, clean, repaint, inject_steps):
        """`euler_sample` with the task's DiT calls: cond and null one at a time, the branch switched at
        step `switch` (cover conditioning scale), the source re-noised outside the window early on."""
        dec = self.model.decoder
        step_of = {float(v): k for k, v in enumerate(t[:-1].tolist())}  # the schedule strictly decreases

        def velocity(state, t0, guided):
            k = step_of[t0]
            cond, null, src = branches[1] if switch is not None and k >= switch else branches[0]
            tt = torch.full((1,), t0)
            ctx = torch.cat([src, mask[:, :, None].expand_as(src)], dim=-1)
            return dec(state, tt, cond, ctx).float(), (dec(state, tt, null, ctx).float() if guided else None)

        def inject(step):
            if step.index >= inject_steps:
                return step.x
            z = step.t_next * eps + (1 - step.t_next) * clean
            return torch.where(repaint[None, :, None], step.x, z)

        return euler_sample(x, t, velocity, p.guidance, p.cfg_scale, (0.0, 1.0), after_step=inject)
