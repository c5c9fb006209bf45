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

from . import noise as noise_sources
from . import sampler, source_audio, tasks
from .bundle import Bundle, SessionOptions
from .device import DeviceOptions
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
    encode_window: float = source_audio.ENCODE_CHUNK_SECONDS  # VAE encode window, seconds
    encode_overlap: float = source_audio.ENCODE_OVERLAP_SECONDS
    noise_source: str | None = None  # default initial-noise source when the request names none
    noise_gpu: str | int | None = None  # default GPU preset of torch-cuda noise


@dataclass
class Branch:
    """One DiT condition: encoder states of both CFG halves and the context source latents."""

    encoder_states: np.ndarray  # [1, S, D]
    null_states: np.ndarray  # [1, S', D]; S' != S only with useNegativePrompt
    src_latents: np.ndarray  # [1, T, 64]

    @property
    def paired(self) -> bool:
        """Both halves fit one batch-2 DiT call (equal encoder lengths). Otherwise they run as two
        batch-1 calls: the DiT has no encoder mask, so padding one half would change its result."""
        return self.null_states.shape == self.encoder_states.shape


@dataclass
class Edit:
    """What a source task adds to the sampling loop and the decode."""

    source_latents: np.ndarray  # [1, T, 64] clean (raw) source latents, silence-padded to T
    strength: float | None = None  # cover: start from the source noised to this level
    switch_scale: float | None = None  # cover: fraction of steps before the text2music condition
    switch: Branch | None = None
    repaint: np.ndarray | None = None  # [T] bool, True = regenerate
    injection_ratio: float = 0.0
    crossfade_frames: int = 0
    wav_crossfade: float = 0.0
    splice: bool = False
    window: tasks.Window | None = None
    source_audio: np.ndarray | None = None  # [2, n] padded source waveform (for the splice)


@dataclass
class Conditioning:
    """Everything constant over one request's renders."""

    frames: int
    encoder_states: np.ndarray  # [1, S, D]
    null_states: np.ndarray  # [1, S, D] (or [1, S', D] with useNegativePrompt)
    src_latents: np.ndarray  # [1, T, 64]
    chunk_mask: np.ndarray  # [1, T]
    prompts: dict
    warnings: list[str]
    timings: dict[str, float]
    output_samples: int = 0
    edit: Edit | None = None


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
             provider_options: dict | None = None, config: GenerationConfig | None = None,
             device: DeviceOptions | None = None) -> "Pipeline":
        options = SessionOptions(provider=provider, threads=threads, provider_options=provider_options or {},
                                 device=device or DeviceOptions())
        return cls(Bundle(bundle, options), config)

    def warm_up(self) -> None:
        """Create every session of the bundle now (a server does this before its first request)."""
        for name in self.bundle.manifest.get("graphs", {}):
            self.bundle.session(name)

    def info(self) -> dict:
        """What a front end shows about this pipeline: the bundle, and each session's providers and precision."""
        manifest = self.bundle.manifest
        return {"bundle": {"name": Path(self.bundle.path).resolve().name, "format": manifest.get("format"),
                           "format_version": manifest.get("format_version")},
                "providers": self.bundle.providers_in_use(), "precisions": self.bundle.precisions_in_use()}

    # -- conditioning -----------------------------------------------------------------------
    def _encode_prompt(self, caption: str, lyrics: str, warnings: list[str] | None):
        caption_ids, cut_caption = self.tokenizer.encode_caption(caption)
        lyric_ids, cut_lyrics = self.tokenizer.encode_lyrics(lyrics)
        if warnings is not None and cut_caption:
            warnings.append("positivePrompt: the caption prompt exceeds 256 tokens and was truncated")
        if warnings is not None and cut_lyrics:
            warnings.append("settings.lyrics: the lyrics exceed 2048 tokens and were truncated")
        text_states, lyric_embeds = self.bundle.run("text_encoder", {
            "caption_ids": caption_ids[None], "lyric_ids": lyric_ids[None]})
        return text_states, lyric_embeds, caption_ids, lyric_ids

    def _condition_states(self, caption: str, lyrics: str, refer: np.ndarray, timings: dict, warnings=None):
        start = time.perf_counter()
        text_states, lyric_embeds, cap, lyr = self._encode_prompt(caption, lyrics, warnings)
        mid = time.perf_counter()
        (states,) = self.bundle.run("condition_encoder", {
            "text_states": text_states, "lyric_embeds": lyric_embeds, "refer_latents": refer})
        timings["text_encoder"] = timings.get("text_encoder", 0.0) + mid - start
        timings["condition_encoder"] = timings.get("condition_encoder", 0.0) + time.perf_counter() - mid
        return states.astype(np.float32), cap, lyr

    def _need_graph(self, name: str, param: str, request: Request) -> None:
        if not self.bundle.has_graph(name):
            raise RequestError(param, f"{param}: bundle {self.bundle.path} has no {name!r} graph, which this "
                               "task needs; export the bundle with every graph (acestep-edge export)",
                               "unsupportedTask", request.task_uuid)

    def encode_audio(self, audio: np.ndarray, seed: int, stream: int) -> np.ndarray:
        """[2, n] audio → posterior sample [1, n // hop, 64] (tiled encode, seeded posterior noise)."""
        cfg = self.config
        mean, scale = source_audio.tiled_encode(
            lambda x: self.bundle.run("vae_encoder", {"audio": x}), audio, self.hop,
            cfg.encode_window, cfg.encode_overlap, self.sample_rate)
        noise = source_audio.posterior_noise(seed, mean.shape[1], stream)
        return source_audio.posterior_sample(mean, scale, noise)

    def reference_latents(self, request: Request, seed: int) -> np.ndarray:
        """[1, 750, 64] timbre input: the reference's three segments encoded, or the silence latent."""
        ref = request.settings.reference_audio
        if ref is None:
            return silence_slice(self.bundle.silence_latent, TIMBRE_FRAMES)[None]
        param = "settings.referenceAudio"
        self._need_graph("vae_encoder", param, request)
        audio = source_audio.load(ref, param, request.task_uuid)
        if source_audio.is_silent(audio):
            raise RequestError(param, f"{param}: the reference audio is silent; send audible audio for the "
                               "timbre reference or remove the field", "invalidAudio", request.task_uuid)
        segments = source_audio.reference_segments(audio, self.sample_rate)
        return self.encode_audio(segments, seed, source_audio.REFERENCE_STREAM)[:, :TIMBRE_FRAMES]

    def condition(self, request: Request, seed: int | None = None) -> Conditioning:
        """Prompts, timbre, source latents and masks of a request; `seed` seeds the VAE posterior draws."""
        settings = request.settings
        seed = seed if seed is not None else request.seed if request.seed is not None else 0
        timings: dict[str, float] = {}
        warnings: list[str] = []
        task = settings.task
        defaults = self.bundle.sampler_defaults
        mask_value = self.config.chunk_mask if self.config.chunk_mask is not None else defaults.get("chunk_mask", 1.0)
        silence = self.bundle.silence_latent

        start = time.perf_counter()
        source = edit = window = None
        if task != "text2music":
            self._need_graph("vae_encoder", "inputs.audio", request)
            source = source_audio.load(request.input_audio, "inputs.audio", request.task_uuid)
        seconds = request.duration if source is None else source.shape[-1] / self.sample_rate
        if source is not None and (settings.repainting_start is not None or settings.repainting_end is not None):
            window = self._window(request, seconds)
            sr = self.sample_rate
            source = np.pad(source, ((0, 0), (tasks.pad_samples(window.left_pad, sr),
                                               tasks.pad_samples(window.right_pad, sr))))
        refer = self.reference_latents(request, seed)
        if source is not None:
            if source_audio.is_silent(source):  # the handler uses silence latents for a silent source
                raw = silence_slice(silence, source.shape[-1] // self.hop)[None]
            else:
                raw = self.encode_audio(source, seed, source_audio.SOURCE_STREAM)
            frames = tasks.latent_length(raw.shape[1])
            raw = tasks.pad_latents(raw, silence_slice(silence, frames), frames)
        else:
            frames = request.latent_frames
        if source is not None or settings.reference_audio is not None:
            timings["audio_encoder"] = time.perf_counter() - start

        metas = format_metas(settings.bpm, settings.time_signature, settings.key_scale, seconds)
        instruction = task_instruction(task, settings.track_name, settings.track_classes)
        caption = caption_prompt(instruction, request.positive_prompt, metas)
        lyrics = lyric_prompt(settings.vocal_language, settings.lyrics)
        states, cap_ids, lyr_ids = self._condition_states(caption, lyrics, refer, timings, warnings)
        null = self._null_states(states, request, instruction, metas, lyrics, refer, timings)

        silence_t = silence_slice(silence, frames)
        src = silence_t[None].astype(np.float32)
        chunk = np.full((1, frames), mask_value, dtype=np.float32)
        prompts = {"caption": caption, "lyrics": lyrics, "caption_tokens": int(cap_ids.size),
                   "lyric_tokens": int(lyr_ids.size)}
        if source is not None:
            start = time.perf_counter()
            context = raw
            if task == "cover":
                self._need_graph("audio_tokenizer", "inputs.audio", request)
                context = self.cover_hints(raw, silence_t)
            span = None if window is None else tasks.window_frames(window, frames, self.sample_rate, self.hop)
            src, chunk, repaint = tasks.task_context(task, context, silence_t, span, mask_value)
            edit = Edit(source_latents=raw, window=window, source_audio=source)
            if task == "cover":
                edit.strength = request.strength
                edit.switch_scale = settings.cover_conditioning_scale
                if tasks.switch_step(request.steps, settings.cover_conditioning_scale) is not None:
                    edit.switch, prompts["switch_caption"] = self._text2music_branch(
                        request, metas, lyrics, refer, silence_t, timings)
            if repaint is not None:
                ratio, cf, wav_cf = tasks.repaint_config(settings.repaint_mode, request.strength)
                edit.repaint, edit.injection_ratio, edit.crossfade_frames = repaint, ratio, cf
                edit.wav_crossfade, edit.splice = wav_cf, settings.repaint_mode != "aggressive"
            timings["task_context"] = time.perf_counter() - start
            output_samples = source.shape[-1]
        else:
            output_samples = int(round(request.duration * self.sample_rate))
        return Conditioning(
            frames=frames, encoder_states=states, null_states=null, src_latents=src.astype(np.float32),
            chunk_mask=chunk, prompts=prompts, warnings=warnings + list(request.warnings), timings=timings,
            output_samples=output_samples, edit=edit)

    def _window(self, request: Request, seconds: float) -> tasks.Window:
        settings = request.settings
        window = tasks.repaint_window(settings.repainting_start, settings.repainting_end, seconds)
        p = "settings."
        if settings.repainting_start is not None and settings.repainting_start > seconds:
            raise RequestError(p + "repaintingStart", f"{p}repaintingStart: {settings.repainting_start:g} s is after "
                               f"the end of the source ({seconds:.2f} s); start at or before it",
                               "valueOutOfRange", request.task_uuid)
        if settings.repainting_end is not None and settings.repainting_end != -1 and settings.repainting_end < 0:
            raise RequestError(p + "repaintingEnd", f"{p}repaintingEnd: {settings.repainting_end:g} s ends before "
                               "the source starts; send an end >= 0 (or -1 for the end of the source)",
                               "valueOutOfRange", request.task_uuid)
        if window.end <= window.start:
            raise RequestError(p + "repaintingEnd", f"{p}repaintingEnd: the window [{window.start - window.left_pad:g}, "
                               f"{window.end - window.left_pad:g}) s is empty; send an end after the start",
                               "conflictingParameters", request.task_uuid)
        total = seconds + window.left_pad + window.right_pad
        if total > tasks.MAX_SECONDS:
            raise RequestError(p + "repaintingEnd", f"{p}repaintingStart/repaintingEnd: the outpainted clip would be "
                               f"{total:.1f} s; the limit is {tasks.MAX_SECONDS:g} s", "valueOutOfRange", request.task_uuid)
        return window

    def cover_hints(self, latents: np.ndarray, silence_t: np.ndarray) -> np.ndarray:
        """FSQ tokenise → detokenise 'LM hints' of [1, T, 64] source latents, cropped back to T."""
        padded = tasks.pool_pad(latents, silence_t)
        quantized, _ = self.bundle.run("audio_tokenizer", {"latents": padded.astype(np.float32)})
        (hints,) = self.bundle.run("audio_detokenizer", {"quantized": quantized})
        return hints[:, :latents.shape[1]].astype(np.float32)

    def _null_states(self, states, request: Request, instruction: str, metas: str, lyrics: str, refer, timings):
        if not request.settings.use_negative_prompt:
            null = np.broadcast_to(self.bundle.null_condition_emb.reshape(1, 1, -1), states.shape)
            return np.ascontiguousarray(null, dtype=np.float32)
        # negativePrompt as the unconditional caption: same instruction, metas, lyrics and timbre.
        negative = caption_prompt(instruction, request.negative_prompt, metas)
        return self._condition_states(negative, lyrics, refer, timings)[0]

    def _text2music_branch(self, request: Request, metas: str, lyrics: str, refer, silence_t,
                           timings) -> tuple[Branch, str]:
        """Cover's second condition and its caption: text2music instruction, silence source
        (generate_audio's non-cover condition)."""
        instruction = task_instruction("text2music")
        caption = caption_prompt(instruction, request.positive_prompt, metas)
        states = self._condition_states(caption, lyrics, refer, timings)[0]
        null = self._null_states(states, request, instruction, metas, lyrics, refer, timings)
        return Branch(states, null, silence_t[None].astype(np.float32)), caption

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
              conditioning: Conditioning | None = None) -> "Render":
        """A step-wise render of result `index` (seed + index). Iterate it, then call `.result()`."""
        request = request if isinstance(request, Request) else parse_request(request)
        self.noise_source(request)  # a bad source/GPU pairing fails before any encoder runs
        seed = request.seed if request.seed is not None else sampler.draw_seed()
        cond = conditioning or self.condition(request, seed)
        return Render(self, request, cond, seed + index, noise)

    def generate(self, request: Request | dict, noise: np.ndarray | None = None,
                 progress: Callable[[int, int, int], None] | None = None, cancel=None, index: int = 0,
                 conditioning: Conditioning | None = None) -> GenerationResult:
        """One result; `progress(step, steps, index)` after every step says which result is rendering."""
        render = self.start(request, noise, index, conditioning)
        for step in render:
            if cancel is not None and cancel.is_set():
                raise Cancelled("render cancelled; nothing was written")
            if progress is not None:
                progress(step.index + 1, step.total, index)
        return render.result()

    def generate_all(self, request: Request | dict, noise: np.ndarray | None = None,
                     progress: Callable[[int, int, int], None] | None = None, cancel=None) -> list[GenerationResult]:
        """Every `numberResults` render; conditioning is computed once and the seeds drawn once."""
        request = request if isinstance(request, Request) else parse_request(request)
        if request.seed is None:
            request = dataclasses.replace(request, seed=sampler.draw_seed())
        self.noise_source(request)
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
        self.noise = self._initial_noise(noise)
        self.x = self.noise.copy()
        edit = cond.edit
        if edit is not None and edit.strength is not None:
            # Cover from a partially noised source: start at the schedule point nearest `strength`.
            first = tasks.cover_start(self.schedule, edit.strength)
            self.x = tasks.renoise(edit.source_latents, float(self.schedule[first]), self.noise)
            self.schedule = self.schedule[first:]
        steps = self.schedule.size - 1
        self.switch_at = tasks.switch_step(steps, edit.switch_scale) if edit is not None and edit.switch else None
        self.inject_steps = round(edit.injection_ratio * steps) if edit is not None and edit.repaint is not None else 0
        self.branch = Branch(cond.encoder_states, cond.null_states, cond.src_latents)
        self._branch_name = "main"
        self._calls = 0
        self.latents: np.ndarray | None = None
        self.timings = dict(cond.timings)
        self._dit_seconds = 0.0
        self.dit = pipeline.bundle.dit_runner(self._dit_constants())

    def _initial_noise(self, noise: np.ndarray | None) -> np.ndarray:
        """Each result draws from its own seed with a fresh generator, as the official code does per
        batch item; explicit noise (--noise FILE.npy) replaces the draw."""
        shape = (1, self.cond.frames, 64)
        if noise is None:
            source = self.pipeline.noise_source(self.request)
            self.noise_info = source.describe(self.seed)
            return source.draw(self.seed, self.cond.frames)
        self.noise_info = {"source": "explicit", "seed": int(self.seed)}
        noise = np.asarray(noise)
        if noise.shape != shape or noise.dtype != np.float32:
            raise RequestError("noise", f"noise: expected float32 of shape {list(shape)} for this duration, got "
                               f"{noise.dtype} {list(noise.shape)}", "invalidNoise", self.request.task_uuid)
        return noise.copy()

    def _dit_constants(self) -> dict:
        """The DiT's constant feeds per (branch, half): a DitRunner keeps them bound on the device
        when the provider is a GPU one (runtime/dit_runner.py)."""
        branches = {"main": self.branch}
        if self.switch_at is not None:
            branches["switch"] = self.cond.edit.switch
        mask = self.cond.chunk_mask
        constants = {}
        for name, b in branches.items():
            constants[name, "cond"] = {"encoder_states": b.encoder_states, "src_latents": b.src_latents,
                                       "chunk_mask": mask}
            if b.paired:
                constants[name, "pair"] = {"encoder_states": np.concatenate([b.encoder_states, b.null_states]),
                                           "src_latents": np.concatenate([b.src_latents] * 2),
                                           "chunk_mask": np.concatenate([mask] * 2)}
            else:
                constants[name, "null"] = {"encoder_states": b.null_states, "src_latents": b.src_latents,
                                           "chunk_mask": mask}
        return constants

    def _dit(self, x, t, key):
        return self.dit(x, np.full((x.shape[0],), t, np.float32), (self._branch_name, key))

    def velocity(self, x: np.ndarray, t: float, batch2: bool):
        if self.switch_at is not None and self._calls == self.switch_at:
            self.branch, self._branch_name = self.cond.edit.switch, "switch"  # cover → text2music condition
        self._calls += 1
        b = self.branch
        start = time.perf_counter()
        if not batch2:
            out = (self._dit(x, t, "cond"), None)
        elif b.paired:
            v = self._dit(np.concatenate([x, x]), t, "pair")
            out = (v[:1], v[1:])
        else:  # a negative caption of another length: two batch-1 calls (see Branch.paired)
            out = (self._dit(x, t, "cond"), self._dit(x, t, "null"))
        self._dit_seconds += time.perf_counter() - start
        return out

    def _post_step(self, k: int, x: np.ndarray, t_next: float) -> np.ndarray:
        edit = self.cond.edit
        if k < self.inject_steps:
            return tasks.inject(x, edit.source_latents, edit.repaint, t_next, self.noise)
        return x

    def __iter__(self) -> Iterator[sampler.Step]:
        settings = self.request.settings
        state = sampler.GuidanceState()
        interval = (settings.cfg_interval_start, settings.cfg_interval_end)
        steps = sampler.iter_sample(self.x, self.schedule, self.velocity, guidance=settings.guidance_type,
                                    scale=self.request.cfg_scale, interval=interval, state=state,
                                    post_step=self._post_step if self.inject_steps else None)
        for step in steps:
            self.x = step.x
            yield step
        edit = self.cond.edit
        if edit is not None and edit.repaint is not None and edit.crossfade_frames > 0:
            self.x = tasks.boundary_blend(self.x, edit.source_latents, edit.repaint, edit.crossfade_frames)
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
        edit = self.cond.edit
        if edit is not None and edit.splice:
            audio = tasks.waveform_splice(audio, edit.source_audio, edit.window, self.pipeline.sample_rate,
                                          edit.wav_crossfade)
        audio = finish_audio(audio, self.cond.output_samples, normalize=config.normalize)
        metadata = {
            "timings": self.timings,
            "warnings": list(self.cond.warnings) + list(bundle.provider_warnings),
            "prompts": self.cond.prompts,
            "steps": int(self.request.steps),
            "shift": self.shift,
            "latent_frames": int(self.cond.frames),
            "task": self.request.settings.task,
            "providers": bundle.providers_in_use(),
            "precisions": bundle.precisions_in_use(),
            "noise": self.noise_info,
        }
        return GenerationResult(audio, self.pipeline.sample_rate, self.latents, self.seed, metadata)
