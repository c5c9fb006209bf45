"""After sampling: latent guard, tiled VAE decode (overlap-discard), anti-clip, −1 dBFS peak, exact length."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

PEAK_DBFS = -1.0
OFFICIAL_OVERLAP = 64  # latent frames of context per side in the official tiled_decode

# The Oobleck decoder's reach (models/vae.py; diffusers AutoencoderOobleck): a kernel-7 convolution at the
# latent rate, then per block a transposed convolution of kernel 2·stride (each output reads at most two
# input samples) and three kernel-7 residual convolutions with dilations 1, 3, 9 (3·(1+3+9) samples at the
# block's rate), then a kernel-7 convolution at the audio rate.
_EDGE_REACH, _UPSAMPLE_REACH, _RESIDUAL_REACH = 3, 2, 3 * (1 + 3 + 9)


class RenderError(RuntimeError):
    """Sampling produced unusable latents; nothing is written."""


def check_latents(latents: np.ndarray) -> None:
    """NaN/Inf or all-zero latents are an error before decode (as the official
    acestep/core/generation/handler/generate_music_decode.py guards before its VAE decode)."""
    if not np.all(np.isfinite(latents)):
        bad = int(np.size(latents) - np.count_nonzero(np.isfinite(latents)))
        raise RenderError(f"sampling produced {bad} NaN/Inf latent values; nothing was decoded or written "
                          "(try fp32, another seed, or fewer steps of a lower-precision bundle)")
    if not np.any(latents):
        raise RenderError("sampling produced all-zero latents; nothing was decoded or written")


def decoder_context_frames(downsampling_ratios) -> int:
    """Latent frames each side of a frame that its decoded audio depends on (the receptive radius), rounded up.

    Overlap-discard tiling with at least this overlap gives the untiled decode up to fp32 rounding: the
    zero padding at a window's edge reaches no kept sample. XL: 11 (measured: 9 is exact, 8 is not).
    """
    reach, rate = float(_EDGE_REACH), 1
    for stride in reversed(tuple(downsampling_ratios)):
        reach += _UPSAMPLE_REACH / rate
        rate *= stride
        reach += _RESIDUAL_REACH / rate
    reach += _EDGE_REACH / rate
    return math.ceil(reach - 1e-9)


def exact_tile_overlap(downsampling_ratios) -> int:
    """The exporter's default VAE overlap: the decoder's context rounded up to 8 frames, at most the official 64.

    The official 64 frames of context re-decode 1/3 of every 512-frame window (stride 384); 16 frames give
    the same audio (see `decoder_context_frames`) with stride 480, 20 % less VAE work on a long render.
    """
    return min(OFFICIAL_OVERLAP, 8 * math.ceil(decoder_context_frames(downsampling_ratios) / 8))


def tile_windows(length: int, chunk: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(window start, window end, core start, core end) in latent frames, official overlap-discard tiling.

    Each core [k·stride, (k+1)·stride) with stride = chunk − 2·overlap is decoded with up to
    `overlap` frames of context per side, which are then thrown away (no crossfade; official
    acestep/core/generation/handler/vae_decode.py `VaeDecodeMixin.tiled_decode`).
    A clip of at most `chunk` frames is one window.
    """
    if chunk < 1 or overlap < 0:
        raise ValueError(f"VAE tiling needs chunk ≥ 1 and overlap ≥ 0 (got chunk={chunk}, overlap={overlap})")
    if length <= chunk:
        return [(0, length, 0, length)]
    while chunk - 2 * overlap <= 0 and overlap > 0:
        overlap //= 2  # as upstream: shrink the overlap rather than fail
    stride = chunk - 2 * overlap
    windows = []
    for k in range(math.ceil(length / stride)):
        core_start, core_end = k * stride, min((k + 1) * stride, length)
        windows.append((max(0, core_start - overlap), min(length, core_end + overlap), core_start, core_end))
    return windows


def worker_windows(length: int, chunk: int, overlap: int, workers: int) -> list[tuple[int, int, int, int]]:
    """`tile_windows` for `workers` windows decoded at once: each window's core holds at most chunk // workers
    frames (so the windows in flight together hold `chunk` frames plus their context, about the memory of
    one `chunk` window), and a clip shorter than that is split in `workers` equal cores so that every
    worker has one. Cores never shrink below max(overlap, 16) frames: a shorter core would spend most of
    its window on context."""
    if workers <= 1:
        return tile_windows(length, chunk, overlap)
    stride = max(min(chunk // workers, math.ceil(length / workers)), overlap, 16)
    return tile_windows(length, stride + 2 * overlap, overlap)


def tiled_decode(decode: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, hop: int,
                 chunk: int = 512, overlap: int = 64,
                 progress: Callable[[int, int], None] | None = None, workers: int = 1) -> np.ndarray:
    """latents [1, T, 64] (DiT layout) → audio [channels, T·hop] via `decode([1, 64, frames])`.

    `workers` > 1 decodes that many windows at once from a thread pool (`decode` must be thread-safe, as an
    ONNX Runtime session's run is; see `worker_windows` for the window sizes). The windows are
    independent and the overlap discards every sample the window edges reach, so the audio is the same
    for any number of workers. `progress(done, total)` hears each decoded chunk (and 0 before the first),
    always from the calling thread.
    """
    z = np.ascontiguousarray(latents.transpose(0, 2, 1))
    windows = worker_windows(z.shape[-1], chunk, overlap, workers)
    if progress is not None:
        progress(0, len(windows))

    def one(window):
        ws, we, cs, ce = window
        audio = decode(np.ascontiguousarray(z[:, :, ws:we]))[0]
        return audio[:, (cs - ws) * hop: audio.shape[-1] - (we - ce) * hop]

    pool = ThreadPoolExecutor(max_workers=min(workers, len(windows))) if workers > 1 else None
    parts = []
    try:
        for k, part in enumerate(pool.map(one, windows) if pool else map(one, windows)):
            parts.append(part)
            if progress is not None:
                progress(k + 1, len(windows))
    finally:
        if pool is not None:  # on an error (or a progress callback that cancels): no window still queued runs
            pool.shutdown(wait=True, cancel_futures=True)
    return np.concatenate(parts, axis=-1).astype(np.float32)


def anticlip(audio: np.ndarray) -> np.ndarray:
    """Divide by the peak when it exceeds 1 (official generate_music_decode, right after the decode,
    before any waveform splice: the kept source is never scaled by the generated part's peak)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio / np.float32(peak)).astype(np.float32) if peak > 1.0 else audio


def finish_audio(audio: np.ndarray, samples: int, normalize: bool = True) -> np.ndarray:
    """Trim or zero-pad to exactly `samples`, then anti-clip and (optionally) peak-normalise to −1 dBFS.

    The latent grid is 40 ms, so the decoded clip can be a fraction of a frame shorter than the
    requested duration; the tail is padded with silence so the file has the asked length. Fitting
    first means the delivered file itself peaks at exactly −1 dBFS (as the reference pipeline does).
    """
    audio = audio.astype(np.float32, copy=True)
    if audio.shape[-1] >= samples:
        audio = audio[:, :samples]
    else:
        audio = np.pad(audio, ((0, 0), (0, samples - audio.shape[-1])))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1.0:
        audio /= peak
        peak = 1.0
    if normalize and peak >= 1e-6:
        audio *= np.float32(10 ** (PEAK_DBFS / 20) / peak)
    return audio
