"""Per-task conditioning as small pure functions: windows, source latents, masks, repaint blending.

The formulas follow the official code (ace-step/ACE-Step-1.5):
- acestep/core/generation/handler/padding_utils.py `prepare_padding_info` (outpainting pads),
- acestep/core/generation/handler/conditioning_masks.py (window frames, chunk mask, silenced src),
- acestep/core/generation/handler/conditioning_target.py (source latents padded to >= 128 frames),
- acestep/models/xl_base/modeling_acestep_v15_xl_base.py `generate_audio` (cover switch, cover
  noise start, `_repaint_step_injection`, `_repaint_boundary_blend`),
- acestep/core/generation/handler/generate_music.py `_resolve_repaint_config`,
- acestep/core/generation/handler/repaint_waveform_splice.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import MIN_FRAMES
# Official generate_music: at most 25 latent frames / 0.05 s of crossfade, scaled by 1 − strength.
MAX_CROSSFADE_FRAMES = 25
MAX_WAV_CROSSFADE_SECONDS = 0.05
DEFAULT_REPAINT_STRENGTH = 0.5


@dataclass(frozen=True)
class Window:
    """A repaint window on the (possibly padded) source timeline."""

    left_pad: float  # seconds of zeros added before the source (negative start)
    right_pad: float  # seconds of zeros added after it (end past the source)
    start: float  # window start, seconds on the padded timeline
    end: float  # window end, seconds on the padded timeline


def repaint_window(start: float | None, end: float | None, source_seconds: float) -> Window:
    """Outpainting pads and the window in padded-timeline seconds; None / -1 end = end of the source."""
    start = 0.0 if start is None else float(start)
    actual_end = source_seconds if end is None or end < 0 else float(end)
    left = max(0.0, -start)
    right = max(0.0, actual_end - source_seconds)
    return Window(left, right, start + left, actual_end + left)


def pad_samples(seconds: float, sr: int) -> int:
    return int(seconds * sr)


def window_frames(window: Window, frames: int, sr: int, hop: int) -> tuple[int, int]:
    """[s, e) latent frames of the window, clamped as the official mask builder does."""
    s = int(window.start * sr // hop)
    e = int(window.end * sr // hop)
    s = max(0, min(s, frames - 1))
    return s, max(s + 1, min(e, frames))


def pad_latents(latents: np.ndarray, silence: np.ndarray, frames: int) -> np.ndarray:
    """[1, T, 64] source latents padded at the end up to `frames` with the silence latent's FIRST
    frames (conditioning_target.py `_get_silence_latent_slice(pad_length)`), not the aligned ones."""
    t = latents.shape[1]
    if t >= frames:
        return latents[:, :frames]
    return np.concatenate([latents, silence[None, :frames - t]], axis=1)


def latent_length(source_frames: int) -> int:
    return max(MIN_FRAMES, source_frames)


def pool_pad(latents: np.ndarray, silence: np.ndarray, window: int = 5) -> np.ndarray:
    """Right-pad to a multiple of the pool window with the first silence frames (official `tokenize`)."""
    pad = (-latents.shape[1]) % window
    return latents if not pad else np.concatenate([latents, silence[None, :pad]], axis=1)


def repaint_config(mode: str, strength: float | None) -> tuple[float, int, float]:
    """(injection ratio, latent crossfade frames, waveform crossfade seconds) of a repaint mode."""
    if mode == "aggressive":
        return 0.0, 0, 0.0
    if mode == "conservative":
        return 1.0, MAX_CROSSFADE_FRAMES, MAX_WAV_CROSSFADE_SECONDS
    s = DEFAULT_REPAINT_STRENGTH if strength is None else min(1.0, max(0.0, float(strength)))
    inv = 1.0 - s
    return inv, int(round(MAX_CROSSFADE_FRAMES * inv)), MAX_WAV_CROSSFADE_SECONDS * inv


def task_context(task: str, source: np.ndarray, silence: np.ndarray, frames: tuple[int, int] | None,
                 mask_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(src_latents [1,T,64], chunk_mask [1,T], repaint_mask [T] bool or None) for a source task.

    A window gives a repaint mask; repaint replaces the window's source frames with silence, lego
    keeps them. The chunk mask is `mask_value` on every frame, window or not: the official default
    chunk_mask_mode "auto" writes its 2.0 into a *bool* mask (conditioning_masks.py), which makes
    every frame True, i.e. 1.0; the window's 1-inside/0-outside mask is the non-default "explicit"
    mode. `source` is the padded raw source (cover replaces it with the FSQ hints before this call).
    """
    t = source.shape[1]
    src = source.copy()
    chunk = np.full((1, t), mask_value, np.float32)
    if frames is None:
        return src, chunk, None
    s, e = frames
    repaint = np.zeros(t, dtype=bool)
    repaint[s:e] = True
    if task != "lego":
        src[:, s:e] = silence[s:e]
    return src, chunk, repaint


def cover_start(schedule: np.ndarray, strength: float) -> int:
    """Index of the schedule point (t[:-1]) nearest to noise level `strength` (first on ties).

    Runware's `strength` is how far the result may move from the source (1 = pure noise); the
    official `cover_noise_strength` is its complement, noise level 1 − cover_noise_strength.
    """
    values = [float(v) for v in schedule[:-1]]
    return min(range(len(values)), key=lambda i: abs(values[i] - float(strength)))


def renoise(source: np.ndarray, t: float, noise: np.ndarray) -> np.ndarray:
    """x_t = t·noise + (1 − t)·source."""
    return (np.float32(t) * noise + np.float32(1.0 - t) * source).astype(np.float32)


def switch_step(steps: int, scale: float | None) -> int | None:
    """Step index where cover switches to the text2music condition (None = never)."""
    if scale is None or scale >= 1.0:
        return None
    return int(steps * scale)


def inject(x: np.ndarray, clean: np.ndarray, repaint: np.ndarray, t_next: float, noise: np.ndarray) -> np.ndarray:
    """Outside the window, replace x by the clean source noised to t_next."""
    z = renoise(clean, t_next, noise)
    return np.where(repaint[None, :, None], x, z).astype(np.float32)


def blend_weights(repaint: np.ndarray, crossfade: int) -> np.ndarray:
    """[T] weights of the generated latents: 1 in the window, linear ramps of `crossfade` frames outside it."""
    soft = repaint.astype(np.float32)
    if crossfade <= 0 or repaint.all() or not repaint.any():
        return soft
    idx = np.flatnonzero(repaint)
    left, right = int(idx[0]), int(idx[-1]) + 1
    lo = max(left - crossfade, 0)
    if left > lo:
        soft[lo:left] = np.linspace(0.0, 1.0, left - lo + 2, dtype=np.float32)[1:-1]
    hi = min(right + crossfade, repaint.size)
    if hi > right:
        soft[right:hi] = np.linspace(1.0, 0.0, hi - right + 2, dtype=np.float32)[1:-1]
    return soft


def boundary_blend(x: np.ndarray, clean: np.ndarray, repaint: np.ndarray, crossfade: int) -> np.ndarray:
    m = blend_weights(repaint, crossfade)[None, :, None]
    return (m * x + (1.0 - m) * clean).astype(np.float32)


def splice_weights(samples: int, start: int, end: int, crossfade: int) -> np.ndarray:
    """[samples] weights of the decoded audio: 1 in [start, end), ramps of `crossfade` samples outside."""
    m = np.zeros(samples, dtype=np.float32)
    m[start:end] = 1.0
    if crossfade <= 0:
        return m
    lo = max(start - crossfade, 0)
    if start > lo:
        m[lo:start] = np.linspace(0.0, 1.0, start - lo + 2, dtype=np.float32)[1:-1]
    hi = min(end + crossfade, samples)
    if hi > end:
        m[end:hi] = np.linspace(1.0, 0.0, hi - end + 2, dtype=np.float32)[1:-1]
    return m


def waveform_splice(pred: np.ndarray, source: np.ndarray, window: Window, sr: int, crossfade_seconds: float
                    ) -> np.ndarray:
    """Decoded [C, n] audio with the (padded) source waveform restored outside the window."""
    n = min(pred.shape[-1], source.shape[-1])
    start = max(0, min(int(window.start * sr), n))
    end = max(start, min(int(window.end * sr), n))
    out = pred.copy()
    if start == 0 and end >= n:
        return out
    m = splice_weights(n, start, end, int(crossfade_seconds * sr))
    out[:, :n] = m * pred[:, :n] + (1.0 - m) * source[:, :n]
    return out
