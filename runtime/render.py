"""The step-wise `Render`: one result's sampling loop over the DiT, then decode and post-processing.

The task's edit object (runtime/edits.py) supplies the start point, the per-step injection, the
latent crossfade and the waveform splice; the render itself never looks at the task.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

import numpy as np

from . import sampler
from .adapters import AdapterSet
from .conditioning import Branch, Conditioning
from .edits import PLAIN
from .postprocess import anticlip, check_latents, finish_audio, tiled_decode
from .request import Request
from .vocab import LATENT_CHANNELS
from .wire import RequestError

if TYPE_CHECKING:
    from .pipeline import GenerationResult, Pipeline


class Render:
    """One result's sampling loop; yields a `sampler.Step` after every DiT step."""

    def __init__(self, pipeline: "Pipeline", request: Request, cond: Conditioning, seed: int,
                 noise: np.ndarray | None, adapters: AdapterSet | None = None, stages=None):
        self.pipeline, self.request, self.cond, self.seed = pipeline, request, cond, seed
        self.stages = stages  # (stage, done, total) for the DiT steps and VAE chunks, or None
        self.shift = pipeline.defaults.shift_for(request)
        self.edit = cond.edit or PLAIN
        self.noise = self._initial_noise(noise)
        self.x, self.schedule = self.edit.start(sampler.timesteps(request.steps, self.shift), self.noise)
        steps = self.schedule.size - 1
        self.switch_at = self.edit.switch_at(steps)
        self.post_step = self.edit.injection(steps, self.noise)
        self.branch = Branch(cond.encoder_states, cond.null_states, cond.src_latents)
        self._branch_name = "main"
        self._calls = 0
        self.latents: np.ndarray | None = None
        self.timings = dict(cond.timings)
        self._dit_seconds = 0.0
        self.adapters = adapters or pipeline.adapters.base()  # the factor feeds, shared by every DiT call
        self.dit = pipeline.bundle.dit_runner(self._dit_constants(), self.adapters.feeds)

    def _initial_noise(self, noise: np.ndarray | None) -> np.ndarray:
        """Each result draws from its own seed with a fresh generator, as the official code does per
        batch item; explicit noise (--noise FILE.npy) replaces the draw."""
        shape = (1, self.cond.frames, LATENT_CHANNELS)
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
            branches["switch"] = self.edit.switch
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
            self.branch, self._branch_name = self.edit.switch, "switch"  # cover → text2music condition
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

    def __iter__(self) -> Iterator[sampler.Step]:
        settings = self.request.settings
        interval = (settings.cfg_interval_start, settings.cfg_interval_end)
        guided = sampler.guided_velocity(self.velocity, settings.guidance_type, self.request.cfg_scale, interval,
                                         sampler.GuidanceState())
        steps = sampler.euler(self.x, self.schedule, guided, self.post_step)
        total = self.schedule.size - 1
        if self.stages is not None:
            self.stages("dit", 0, total)
        for step in steps:
            self.x = step.x
            if self.stages is not None:
                self.stages("dit", step.index + 1, step.total)
            yield step
        self.x = self.edit.crossfade(self.x)
        self.latents = self.x
        self.timings["dit"] = self._dit_seconds

    def result(self) -> "GenerationResult":
        from .pipeline import GenerationResult

        if self.latents is None:
            for _ in self:
                pass
        check_latents(self.latents)
        bundle, config, defaults = self.pipeline.bundle, self.pipeline.config, self.pipeline.defaults
        start = time.perf_counter()
        audio = tiled_decode(lambda z: bundle.run("vae_decoder", {"latents": z})[0], self.latents,
                             self.pipeline.hop, defaults.vae_chunk, defaults.vae_overlap,
                             None if self.stages is None else lambda done, n: self.stages("vae_decoder", done, n),
                             workers=bundle.vae_workers)
        self.timings["vae_decoder"] = time.perf_counter() - start
        # As generate_music: anti-clip the decode, then splice the source back, then normalise.
        audio = self.edit.splice(anticlip(audio), self.pipeline.sample_rate)
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
            "int8_weights": bundle.weight_forms_in_use(),
            "noise": self.noise_info,
            "adapters": self.adapters.report,
        }
        return GenerationResult(audio, self.pipeline.sample_rate, self.latents, self.seed, metadata)
