"""Source and reference audio: loading with Runware-shaped errors, timbre segments, tiled VAE encode."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .audio_io import MODEL_SAMPLE_RATE, AudioError, AudioTooLong, read_audio
from .postprocess import tile_windows
from .vocab import HOP_LENGTH, MAX_SECONDS
from .wire import RequestError

# Official tiled encode (ace-step/ACE-Step-1.5 acestep/core/generation/handler/vae_encode*.py):
# 30-s windows (15 s on small GPUs), 2-s overlap, overlap-discard, `latent_dist.sample()` per window.
ENCODE_CHUNK_SECONDS = 30.0
ENCODE_OVERLAP_SECONDS = 2.0
# Timbre reference (acestep/core/generation/handler/io_audio.py process_reference_audio).
REFERENCE_SECONDS = 30
SEGMENT_SECONDS = 10
SILENCE_LEVEL = 1e-6  # the handler's is_silence: every |sample| below this
POSTERIOR_STD_FLOOR = 1e-4  # diffusers OobleckDiagonalGaussianDistribution: std = softplus(scale) + 1e-4
# The longest source or reference accepted is the render limit (vocab.MAX_SECONDS); checked from the
# header before decoding, so a long 8-kHz data URI cannot expand to gigabytes of float32.
# Streams of the posterior-noise generator, so source and reference draws never coincide.
SOURCE_STREAM, REFERENCE_STREAM = 1, 2


def load(source: str, param: str, task_uuid: str | None) -> np.ndarray:
    """[2, n] float32 at 48 kHz, or a RequestError naming `param` (missing, unreadable, empty, too long)."""
    try:
        audio = read_audio(source, max_seconds=MAX_SECONDS)
    except AudioTooLong as exc:
        raise RequestError(param, f"{param}: {exc}", "valueOutOfRange", task_uuid) from exc
    except AudioError as exc:
        raise RequestError(param, f"{param}: {exc}", "invalidAudio", task_uuid) from exc
    if audio.shape[-1] < HOP_LENGTH:
        raise RequestError(param, f"{param}: the audio is {audio.shape[-1] / MODEL_SAMPLE_RATE:.3f} s long; "
                           "send at least 0.04 s (one latent frame)", "invalidAudio", task_uuid)
    return audio


def is_silent(audio: np.ndarray) -> bool:
    return bool(np.all(np.abs(audio) < SILENCE_LEVEL))


def reference_segments(audio: np.ndarray, sr: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Three 10-s pieces (front, middle, back third) → [2, 30·sr], as the official handler builds them.

    The handler tiles audio shorter than 30 s until it is at least 30 s long, then draws each
    piece's offset at random inside its third (Python `random`, unseeded). We take the middle of
    each offset range instead, so a render is reproducible.
    """
    target, segment = REFERENCE_SECONDS * sr, SEGMENT_SECONDS * sr
    if audio.shape[-1] < target:
        audio = np.tile(audio, (1, -(-target // audio.shape[-1])))
    total = audio.shape[-1]
    third = total // 3
    starts = [(max(0, third - segment)) // 2,
              third + max(0, third - segment) // 2,
              2 * third + max(0, (total - 2 * third) - segment) // 2]
    return np.concatenate([audio[:, s:s + segment] for s in starts], axis=-1)


def tiled_encode(run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], audio: np.ndarray, hop: int,
                 chunk_seconds: float = ENCODE_CHUNK_SECONDS, overlap_seconds: float = ENCODE_OVERLAP_SECONDS,
                 sr: int = MODEL_SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mean, scale) [1, T, 64] of [2, n] audio, T = n // hop, windowed with overlap-discard.

    The whole waveform is encoded, a partial last hop included (the official vae_encode does not
    cut it; those samples still reach the last frames through the encoder's convolutions). Windows
    are laid out in samples with hop-aligned cores; window and overlap must be whole hops.
    """
    chunk, overlap = int(round(chunk_seconds * sr)), int(round(overlap_seconds * sr))
    if chunk % hop or overlap % hop or chunk <= 2 * overlap:
        raise ValueError(f"encode window {chunk_seconds} s / overlap {overlap_seconds} s must be whole "
                         f"{hop}-sample hops with window > 2·overlap")
    n = audio.shape[-1]
    x = np.ascontiguousarray(audio[None], dtype=np.float32)
    if n <= chunk:
        mean, scale = run(x)
        return mean.transpose(0, 2, 1), scale.transpose(0, 2, 1)
    means, scales = [], []
    # The decoder's overlap-discard tiling, in samples (window and overlap are whole hops).
    for ws, we, cs, ce in tile_windows(n, chunk, overlap):
        if ce // hop == cs // hop:
            continue  # a tail shorter than one hop adds no latent frame (nor would one whole encode)
        mean, scale = run(np.ascontiguousarray(x[:, :, ws:we]))
        lo, hi = (cs - ws) // hop, mean.shape[-1] - (we - ce) // hop
        means.append(mean[:, :, lo:hi])
        scales.append(scale[:, :, lo:hi])
    return np.concatenate(means, -1).transpose(0, 2, 1), np.concatenate(scales, -1).transpose(0, 2, 1)


def posterior_noise(seed: int, frames: int, stream: int, channels: int = 64) -> np.ndarray:
    """Standard normal [1, frames, channels] float32 for sampling the VAE posterior (PCG64([seed, stream]))."""
    rng = np.random.Generator(np.random.PCG64([int(seed), int(stream)]))
    return rng.standard_normal((1, frames, channels), dtype=np.float32)


def posterior_sample(mean: np.ndarray, scale: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """mean + (softplus(scale) + 1e-4)·noise: the official `latent_dist.sample()` with explicit noise."""
    std = np.logaddexp(0.0, scale.astype(np.float64)) + POSTERIOR_STD_FLOOR
    return (mean + std * noise).astype(np.float32)
