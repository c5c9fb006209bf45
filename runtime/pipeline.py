"""`Pipeline`: a bundle's sessions, and the entry points that condition a request and render it.

`Pipeline.load(bundle)` creates each ONNX Runtime session once; `generate()` renders one result,
`generate_all()` all `numberResults` (seeds seed, seed+1, …), and `start()` returns a step-wise
`Render` for callers that drive the loop themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import noise as noise_sources
from . import defaults, sampler, source_audio
from .adapters import Adapters
from .bundle import TEXT2MUSIC_GRAPHS, Bundle, SessionOptions, Stages
from .conditioning import Branch, Conditioner, Conditioning, silence_slice
from .device import DeviceOptions
from .edits import Cover, Edit, Repaint, SourceEdit
from .prompts import PromptTokenizer
from .render import Render
from .request import Request, RequestError, parse_request

# Names callers import from here (the pipeline's public surface before the split).
__all__ = ["Branch", "Cancelled", "Conditioning", "Cover", "Edit", "GenerationConfig", "GenerationResult",
           "Pipeline", "Render", "Repaint", "RequestError", "SourceEdit", "silence_slice"]


@dataclass(frozen=True)
class GenerationConfig:
    """Render options that are not part of the Runware request; None means "the bundle's default"."""

    shift: float | None = None
    chunk_mask: float | None = None
    vae_chunk: int | None = None
    vae_overlap: int | None = None
    normalize: bool = True
    encode_window: float = source_audio.ENCODE_CHUNK_SECONDS  # VAE encode window, seconds
    encode_overlap: float = source_audio.ENCODE_OVERLAP_SECONDS
    noise_source: str | None = None  # default initial-noise source when the request names none
    noise_gpu: str | int | None = None  # default GPU preset of torch-cuda noise


@dataclass
class GenerationResult:
    audio: np.ndarray  # [channels, samples] float32
    sample_rate: int
    latents: np.ndarray  # [1, T, 64] float32, before decode
    seed: int
    metadata: dict = field(default_factory=dict)


class Cancelled(RuntimeError):
    """The caller's cancel event was set; nothing is written."""


class Pipeline:
    def __init__(self, bundle: Bundle, config: GenerationConfig | None = None):
        self.bundle = bundle
        self.config = config or GenerationConfig()
        self.tokenizer = PromptTokenizer.from_file(bundle.tokenizer_path)
        self.sample_rate = int(bundle.audio["sample_rate"])
        self.hop = int(bundle.audio["hop_length"])
        self.defaults = defaults.resolve(bundle.sampler_defaults, self.config)
        self.conditioner = Conditioner(bundle, self.tokenizer, self.config)
        # LoRA/LoKr per request (runtime/adapters.py); front doors may replace `adapters.resolver`.
        self.adapters = Adapters(bundle.manifest.get("graphs", {}).get("dit"),
                                 (bundle.manifest.get("export") or {}).get("command"))

    @classmethod
    def load(cls, bundle: str | Path, provider: str = "cpu", threads: int | None = None,
             provider_options: dict | None = None, config: GenerationConfig | None = None,
             device: DeviceOptions | None = None) -> "Pipeline":
        options = SessionOptions(provider=provider, threads=threads, provider_options=provider_options or {},
                                 device=device or DeviceOptions())
        return cls(Bundle(bundle, options), config)

    def warm_up(self) -> None:
        """Create the text2music sessions now (a server does this before its first request); the encoders
        editing tasks add are created by the first request that needs them, so no session holds memory idly."""
        for name in TEXT2MUSIC_GRAPHS:
            if self.bundle.has_graph(name):
                self.bundle.session(name)

    def info(self) -> dict:
        """What a front end shows: the bundle, and each created session's providers and precision."""
        manifest = self.bundle.manifest
        return {"bundle": {"name": Path(self.bundle.path).resolve().name, "format": manifest.get("format"),
                           "format_version": manifest.get("format_version")},
                "providers": self.bundle.providers_in_use(), "precisions": self.bundle.precisions_in_use(),
                "int8_weights": self.bundle.weight_forms_in_use()}

    def condition(self, request: Request, seed: int | None = None) -> Conditioning:
        """Prompts, timbre, source latents and masks of a request; `seed` seeds the VAE posterior draws."""
        return self.conditioner.condition(request, seed, self.defaults.chunk_mask)

    def noise_source(self, request: Request) -> noise_sources.NoiseSource:
        """The request's noise source and GPU, else this pipeline's defaults (CLI --noise-source/--noise-gpu)."""
        settings = request.settings
        name = settings.noise or self.config.noise_source
        gpu = settings.noise_gpu
        if gpu is None and (name or noise_sources.DEFAULT_SOURCE) == "torch-cuda":
            gpu = self.config.noise_gpu
        try:
            return noise_sources.source(name, gpu)
        except ValueError as exc:
            raise RequestError("settings.noiseGpu" if settings.noise_gpu is not None else "settings.noise",
                               f"settings.noise: {exc}", "conflictingParameters", request.task_uuid) from exc

    # -- rendering ----------------------------------------------------------------------------
    def start(self, request: Request | dict, noise: np.ndarray | None = None, index: int = 0,
              conditioning: Conditioning | None = None, stages: Stages | None = None) -> "Render":
        """A step-wise render of result `index` (seed + index). Iterate it, then call `.result()`.

        `stages(stage, done, total)` hears every stage: each encoder graph, the DiT steps, the VAE chunks.
        """
        request = request if isinstance(request, Request) else parse_request(request)
        self.noise_source(request)  # a bad source/GPU pairing fails before any encoder runs
        adapters = self.adapters.resolve(request.lora, request.task_uuid)  # so does a bad adapter
        seed = request.seed if request.seed is not None else sampler.draw_seed()
        if conditioning is None:
            with self.bundle.observing(stages):
                conditioning = self.condition(request, seed)
        return Render(self, request, conditioning, seed + index, noise, adapters, stages)

    def generate(self, request: Request | dict, noise: np.ndarray | None = None,
                 progress: Callable[[int, int, int], None] | None = None, cancel=None, index: int = 0,
                 conditioning: Conditioning | None = None, stages: Stages | None = None) -> GenerationResult:
        """One result; `progress(step, steps, index)` after every step says which result is rendering."""
        render = self.start(request, noise, index, conditioning, stages)
        for step in render:
            if cancel is not None and cancel.is_set():
                raise Cancelled("render cancelled; nothing was written")
            if progress is not None:
                progress(step.index + 1, step.total, index)
        return render.result()

    def generate_all(self, request: Request | dict, noise: np.ndarray | None = None,
                     progress: Callable[[int, int, int], None] | None = None, cancel=None,
                     stages: Stages | None = None) -> list[GenerationResult]:
        """Every `numberResults` render; conditioning is computed once and the seeds drawn once."""
        request = request if isinstance(request, Request) else parse_request(request)
        if request.seed is None:
            request = dataclasses.replace(request, seed=sampler.draw_seed())
        self.noise_source(request)
        self.adapters.resolve(request.lora, request.task_uuid)  # a bad adapter fails before conditioning
        with self.bundle.observing(stages):
            cond = self.condition(request)
        return [self.generate(request, noise if i == 0 else None, progress, cancel, i, cond, stages)
                for i in range(request.number_results)]
