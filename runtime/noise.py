"""Initial-noise sources: the request's seed drawn as the official code draws it (torch CUDA or CPU generator) or with numpy.

The official handler draws `torch.randn(1, T, 64, generator=Generator(device).manual_seed(seed_i),
dtype=<model dtype>)` with a fresh generator per batch item (ace-step/ACE-Step-1.5,
acestep/models/xl_base/modeling_acestep_v15_xl_base.py `prepare_noise`); on CUDA the model dtype
is bfloat16, or float16 before Ampere (handler/init_service_orchestrator.py). The sources here
reproduce those draws without torch, so the same seed gives the same song.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from . import noise_cpu, noise_cuda, sampler
from .fields import choice, field_error
from .fp32 import to_bfloat16, to_float16

SOURCES = ("torch-cuda", "torch-cpu", "numpy")
DEFAULT_SOURCE = "torch-cuda"
DEFAULT_GPU = "h100"
CHANNELS = 64
MAX_SEED = 2**64 - 1  # torch's manual_seed takes any uint64


@dataclass(frozen=True)
class Gpu:
    """What decides torch's CUDA launch: the SM count, threads per SM, and the model dtype it draws in."""

    name: str
    sms: int
    threads_per_sm: int
    dtype: str = "bfloat16"  # the official handler runs pre-Ampere GPUs in float16

    @property
    def wave_frames(self) -> int:
        """Longest [1, T, 64] draw that fits one wave of threads (the same on every GPU up to there)."""
        return noise_cuda.BLOCK * self.sms * (self.threads_per_sm // noise_cuda.BLOCK) // CHANNELS


# (SMs, max resident threads per SM) of each card, from NVIDIA's specifications.
_PRESETS = {
    "h100": (132, 2048), "h200": (132, 2048), "h100-sxm": (132, 2048), "h100-pcie": (114, 2048),
    "a100": (108, 2048), "l40s": (142, 1536), "rtx-pro-6000": (188, 1536), "rtx4090": (128, 1536),
    "rtx3090": (82, 1536), "a10g": (80, 1536), "l4": (58, 1536), "t4": (40, 1024),
}
_FLOAT16 = ("t4",)  # Turing: no bf16, the handler picks float16
GPU_PRESETS = tuple(_PRESETS)
_CUSTOM = re.compile(r"^\s*(\d+)\s*(?:[x:/]\s*(\d+))?\s*$")
CUSTOM_THREADS = 2048  # threads per SM assumed for a bare SM count (every data-centre GPU since Volta)


def gpu(value: str | int | None = None) -> Gpu:
    """A preset name, an SM count, or 'SMSxTHREADS' (e.g. '84x1536'); None = the H100/H200 preset."""
    if value is None:
        value = DEFAULT_GPU
    if isinstance(value, bool):
        raise ValueError(f"expected a GPU preset name or an SM count, got {value!r}")
    if isinstance(value, str) and value.strip().lower() in _PRESETS:
        name = value.strip().lower()
        sms, threads = _PRESETS[name]
        return Gpu(name, sms, threads, "float16" if name in _FLOAT16 else "bfloat16")
    match = _CUSTOM.match(str(value)) if isinstance(value, (str, int)) else None
    if match is None:
        raise ValueError(f"{value!r} is not a GPU; use one of {', '.join(GPU_PRESETS)}, an SM count, "
                         "or 'SMSxTHREADS' such as '84x1536'")
    sms, threads = int(match.group(1)), int(match.group(2) or CUSTOM_THREADS)
    if not 1 <= sms <= 4096 or threads % noise_cuda.BLOCK or not 256 <= threads <= 4096:
        raise ValueError(f"{value!r}: use 1–4096 SMs and a multiple of 256 threads per SM up to 4096")
    return Gpu(f"{sms}x{threads}", sms, threads)


@dataclass(frozen=True)
class NoiseSource:
    """Where a render's initial noise comes from."""

    source: str = DEFAULT_SOURCE
    gpu: Gpu | None = None  # torch-cuda only

    def draw(self, seed: int, frames: int) -> np.ndarray:
        """float32 [1, frames, 64] noise for `seed`, from a fresh generator."""
        return draw(self.source, seed, frames, self.gpu)

    def describe(self, seed: int) -> dict:
        """Response metadata: which source, GPU preset and seed this result's noise came from."""
        out = {"source": self.source, "seed": int(seed)}
        if self.source == "torch-cuda":
            g = self.gpu or gpu()
            out.update(gpu=g.name, dtype=g.dtype)
        elif self.source == "torch-cpu":
            out["dtype"] = "float32"
        return out


def source(name: str | None = None, gpu_value: str | int | None = None) -> NoiseSource:
    """Validated NoiseSource; a GPU is accepted with torch-cuda only."""
    name = DEFAULT_SOURCE if name is None else str(name).strip().lower()
    if name not in SOURCES:
        raise ValueError(f"{name!r} is not a noise source; use one of {', '.join(SOURCES)}")
    if gpu_value is not None and name != "torch-cuda":
        raise ValueError(f"a GPU applies to noise source torch-cuda only (source is {name})")
    return NoiseSource(name, gpu(gpu_value) if name == "torch-cuda" else None)


def read_settings(settings) -> tuple[str | None, str | None]:
    """(settings.noise, settings.noiseGpu as a canonical GPU name) of a request's settings, or a
    RequestError naming the field."""
    source_name = choice(settings, "noise", "settings.noise", SOURCES)
    raw = settings.get("noiseGpu")
    if raw is None:
        return source_name, None
    if source_name not in (None, "torch-cuda"):
        raise field_error("settings.noiseGpu", f"applies to settings.noise torch-cuda only (noise is {source_name}); "
                          "remove it", "conflictingParameters")
    try:
        return source_name, gpu(raw).name
    except ValueError as exc:
        raise field_error("settings.noiseGpu", str(exc), "invalidParameter") from exc


def draw(name: str, seed: int, frames: int, gpu_spec: Gpu | None = None) -> np.ndarray:
    """float32 [1, frames, 64] initial noise of `seed` from source `name`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    shape = (1, int(frames), CHANNELS)
    if name == "numpy":
        return sampler.initial_noise(int(seed), int(frames), CHANNELS)
    if name == "torch-cpu":
        return noise_cpu.randn(int(seed), shape)
    if name == "torch-cuda":
        g = gpu_spec or gpu()
        values = noise_cuda.randn(int(seed), shape, g.sms, g.threads_per_sm)
        return to_float16(values) if g.dtype == "float16" else to_bfloat16(values)
    raise ValueError(f"{name!r} is not a noise source; use one of {', '.join(SOURCES)}")
