"""Render a validated request from a bundle: conditioning, the step loop, decode, post-processing.

`Pipeline.load(bundle)` creates each ONNX Runtime session once; `generate()` renders one result,
`generate_all()` all `numberResults` (seeds seed, seed+1, …), and `start()` returns a step-wise
`Render` for callers that drive the loop themselves.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import sampler
from .bundle import Bundle, SessionOptions
from .postprocess import check_latents, finish_audio, tiled_decode
from .prompts import PromptTokenizer, caption_prompt, format_metas, lyric_prompt, task_instruction
from .request import Request, RequestError, parse_request

TIMBRE_FRAMES = 750  # 30 s of 25 Hz latents: the timbre encoder's reference length


@dataclass(frozen=True)
class GenerationConfig:
    """Render options that are not part of the Runware request; None means "the bundle's default"."""

    shift: float | None = None
    chunk_mask: float | None = None
    vae_chunk: int | None = None
    vae_overlap: int | None = None
    normalize: bool = True


@dataclass
class Conditioning:
    """Everything constant over one request's renders."""

    frames: int
    encoder_states: np.ndarray  # [1, S, D]
    null_states: np.ndarray  # [1, S, D]
    src_latents: np.ndarray  # [1, T, 64]
    chunk_mask: np.ndarray  # [1, T]
    prompts: dict
    warnings: list[str]
    timings: dict[str, float]


@dataclass
class GenerationResult:
    audio: np.ndarray  # [channels, samples] float32
    sample_rate: int
    latents: np.ndarray  # [1, T, 64] float32, before decode
    seed: int
    metadata: dict = field(default_factory=dict)


class Cancelled(RuntimeError):
    """The caller's cancel event was set; nothing is written."""


def silence_slice(silence: np.ndarray, frames: int) -> np.ndarray:
    """[frames, 64] from the silence latent, tiled when the clip is longer than the stored one."""
    reps = -(-frames // silence.shape[0])
    return np.tile(silence, (reps, 1))[:frames] if reps > 1 else silence[:frames]


class Pipeline:
    def __init__(self, bundle: Bundle, config: GenerationConfig | None = None):
        self.bundle = bundle
        self.config = config or GenerationConfig()
        self.tokenizer = PromptTokenizer.from_file(bundle.tokenizer_path)
        self.sample_rate = int(bundle.audio["sample_rate"])
        self.hop = int(bundle.audio["hop_length"])

    @classmethod
    def load(cls, bundle: str | Path, provider: str = "cpu", threads: int | None = None,
             provider_options: dict | None = None, config: GenerationConfig | None = None) -> "Pipeline":
        options = SessionOptions(provider=provider, threads=threads, provider_options=provider_options or {})
        return cls(Bundle(bundle, options), config)

    # -- conditioning -----------------------------------------------------------------------
    def condition(self, request: Request) -> Conditioning:
        settings = request.settings
        if settings.task != "text2music":
            raise RequestError("settings.task", f"settings.task: {settings.task!r} is not supported by this runtime "
                               "yet; only 'text2music' renders", "unsupportedTask", request.task_uuid)
        if settings.use_negative_prompt:
            # Encoding the negative caption as the unconditional branch changes the encoder length of
            # one half of the CFG batch; that path is not built yet, so refuse rather than ignore it.
            raise RequestError("settings.useNegativePrompt", "settings.useNegativePrompt: encoding negativePrompt "
                               "as the unconditional caption is not supported by this runtime yet; remove it "
                               "(the learned null condition is used)", "unsupportedParameter", request.task_uuid)
        timings: dict[str, float] = {}
        warnings: list[str] = []
        start = time.perf_counter()
        metas = format_metas(settings.bpm, settings.time_signature, settings.key_scale, request.duration)
        caption = caption_prompt(task_instruction("text2music"), request.positive_prompt, metas)
        lyrics = lyric_prompt(settings.vocal_language, settings.lyrics)
        caption_ids, cut_caption = self.tokenizer.encode_caption(caption)
        lyric_ids, cut_lyrics = self.tokenizer.encode_lyrics(lyrics)
        if cut_caption:
            warnings.append("positivePrompt: the caption prompt exceeds 256 tokens and was truncated")
        if cut_lyrics:
            warnings.append("settings.lyrics: the lyrics exceed 2048 tokens and were truncated")
        text_states, lyric_embeds = self.bundle.run("text_encoder", {
            "caption_ids": caption_ids[None], "lyric_ids": lyric_ids[None]})
        timings["text_encoder"] = time.perf_counter() - start

        start = time.perf_counter()
        refer = silence_slice(self.bundle.silence_latent, TIMBRE_FRAMES)[None]
        (encoder_states,) = self.bundle.run("condition_encoder", {
            "text_states": text_states, "lyric_embeds": lyric_embeds, "refer_latents": refer})
        timings["condition_encoder"] = time.perf_counter() - start

        frames = request.latent_frames
        defaults = self.bundle.sampler_defaults
        mask_value = self.config.chunk_mask if self.config.chunk_mask is not None else defaults.get("chunk_mask", 1.0)
        null = np.broadcast_to(self.bundle.null_condition_emb.reshape(1, 1, -1), encoder_states.shape)
        return Conditioning(
            frames=frames,
            encoder_states=encoder_states.astype(np.float32),
            null_states=np.ascontiguousarray(null, dtype=np.float32),
            src_latents=silence_slice(self.bundle.silence_latent, frames)[None].astype(np.float32),
            chunk_mask=np.full((1, frames), mask_value, dtype=np.float32),
            prompts={"caption": caption, "lyrics": lyrics, "caption_tokens": int(caption_ids.size),
                     "lyric_tokens": int(lyric_ids.size)},
            warnings=warnings + list(request.warnings),
            timings=timings,
        )

    # -- rendering ----------------------------------------------------------------------------
    def start(self, request: Request | dict, noise: np.ndarray | None = None, index: int = 0,
              conditioning: Conditioning | None = None) -> "Render":
        """A step-wise render of result `index` (seed + index). Iterate it, then call `.result()`."""
        request = request if isinstance(request, Request) else parse_request(request)
        cond = conditioning or self.condition(request)
        seed = request.seed if request.seed is not None else sampler.draw_seed()
        return Render(self, request, cond, seed + index, noise)

    def generate(self, request: Request | dict, noise: np.ndarray | None = None,
                 progress: Callable[[int, int], None] | None = None, cancel=None, index: int = 0,
                 conditioning: Conditioning | None = None) -> GenerationResult:
        render = self.start(request, noise, index, conditioning)
        for step in render:
            if cancel is not None and cancel.is_set():
                raise Cancelled("render cancelled; nothing was written")
            if progress is not None:
                progress(step.index + 1, step.total)
        return render.result()

    def generate_all(self, request: Request | dict, noise: np.ndarray | None = None,
                     progress: Callable[[int, int], None] | None = None, cancel=None) -> list[GenerationResult]:
        """Every `numberResults` render; conditioning is computed once and the seeds drawn once."""
        request = request if isinstance(request, Request) else parse_request(request)
        if request.seed is None:
            request = dataclasses.replace(request, seed=sampler.draw_seed())
        cond = self.condition(request)
        return [self.generate(request, noise if i == 0 else None, progress, cancel, i, cond)
                for i in range(request.number_results)]


class Render:
    """One result's sampling loop; yields a `sampler.Step` after every DiT step."""

    def __init__(self, pipeline: Pipeline, request: Request, cond: Conditioning, seed: int,
                 noise: np.ndarray | None):
        self.pipeline, self.request, self.cond, self.seed = pipeline, request, cond, seed
        defaults = pipeline.bundle.sampler_defaults
        config = pipeline.config
        shift = request.settings.shift
        shift = shift if shift is not None else config.shift if config.shift is not None else defaults.get("shift", 3.0)
        self.schedule = sampler.timesteps(request.steps, shift)
        self.shift = float(shift)
        self.x = self._initial_noise(noise)
        self.latents: np.ndarray | None = None
        self.timings = dict(cond.timings)
        self._dit_seconds = 0.0
        self._batch2 = {
            "encoder_states": np.concatenate([cond.encoder_states, cond.null_states]),
            "src_latents": np.concatenate([cond.src_latents] * 2),
            "chunk_mask": np.concatenate([cond.chunk_mask] * 2),
        }

    def _initial_noise(self, noise: np.ndarray | None) -> np.ndarray:
        shape = (1, self.cond.frames, 64)
        if noise is None:
            return sampler.initial_noise(self.seed, self.cond.frames)
        noise = np.asarray(noise)
        if noise.shape != shape or noise.dtype != np.float32:
            raise RequestError("noise", f"noise: expected float32 of shape {list(shape)} for this duration, got "
                               f"{noise.dtype} {list(noise.shape)}", "invalidNoise", self.request.task_uuid)
        return noise.copy()

    def velocity(self, x: np.ndarray, t: float, batch2: bool):
        cond = self.cond
        start = time.perf_counter()
        if batch2:
            feeds = dict(self._batch2, x=np.concatenate([x, x]), t=np.full((2,), t, np.float32))
            (v,) = self.pipeline.bundle.run("dit", feeds)
            out = (v[:1], v[1:])
        else:
            feeds = {"x": x, "t": np.full((1,), t, np.float32), "encoder_states": cond.encoder_states,
                     "src_latents": cond.src_latents, "chunk_mask": cond.chunk_mask}
            (v,) = self.pipeline.bundle.run("dit", feeds)
            out = (v, None)
        self._dit_seconds += time.perf_counter() - start
        return out

    def __iter__(self) -> Iterator[sampler.Step]:
        settings = self.request.settings
        state = sampler.GuidanceState()
        interval = (settings.cfg_interval_start, settings.cfg_interval_end)
        steps = sampler.iter_sample(self.x, self.schedule, self.velocity, guidance=settings.guidance_type,
                                    scale=self.request.cfg_scale, interval=interval, state=state)
        for step in steps:
            self.x = step.x
            yield step
        self.latents = self.x
        self.timings["dit"] = self._dit_seconds

    def result(self) -> GenerationResult:
        if self.latents is None:
            for _ in self:
                pass
        check_latents(self.latents)
        bundle, config = self.pipeline.bundle, self.pipeline.config
        defaults = bundle.sampler_defaults
        start = time.perf_counter()
        audio = tiled_decode(lambda z: bundle.run("vae_decoder", {"latents": z})[0], self.latents,
                             self.pipeline.hop,
                             config.vae_chunk or defaults.get("vae_chunk", 512),
                             config.vae_overlap if config.vae_overlap is not None else defaults.get("vae_overlap", 64))
        self.timings["vae_decoder"] = time.perf_counter() - start
        samples = int(round(self.request.duration * self.pipeline.sample_rate))
        audio = finish_audio(audio, samples, normalize=config.normalize)
        metadata = {
            "timings": self.timings,
            "warnings": list(self.cond.warnings),
            "prompts": self.cond.prompts,
            "steps": int(self.request.steps),
            "shift": self.shift,
            "latent_frames": int(self.cond.frames),
            "providers": bundle.providers_in_use(),
            "precisions": bundle.precisions_in_use(),
        }
        return GenerationResult(audio, self.pipeline.sample_rate, self.latents, self.seed, metadata)

