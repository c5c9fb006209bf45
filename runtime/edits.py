"""A task's edit as one frozen object whose hooks the render calls: start, injection, crossfade, splice.

`Edit` itself is text2music (no source: every hook leaves the render alone); `SourceEdit` keeps the
source (extract, complete, cover) and may start from the noised source and switch to the
text2music condition; `Repaint` (repaint and lego, which always have a range) also injects the
source outside the window, crossfades the latents and splices the waveform. The math lives in
`tasks.py`; these classes only say when each piece applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import tasks

if TYPE_CHECKING:
    from .conditioning import Branch

PostStep = Callable[[int, np.ndarray, float], np.ndarray]


@dataclass(frozen=True, eq=False)
class Edit:
    """No source: the render starts from noise and every hook is a no-op."""

    def start(self, schedule: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(initial x, schedule to run) for this render's noise."""
        return noise.copy(), schedule

    def switch_at(self, steps: int) -> int | None:
        """DiT call index where the render switches to `self.switch` (None = never)."""
        return None

    def injection(self, steps: int, noise: np.ndarray) -> PostStep | None:
        """A per-step hook `(k, x, t_next) → x` for the sampler, or None."""
        return None

    def crossfade(self, latents: np.ndarray) -> np.ndarray:
        """The final latents after the edit's latent-space blend."""
        return latents

    def splice(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """The decoded audio after the edit's waveform splice."""
        return audio


@dataclass(frozen=True, eq=False)
class SourceEdit(Edit):
    """A source task: its clean latents and waveform travel with the render. As the official
    generate_audio does for every task, it may start from the noised source (`strength`) and switch
    to the text2music condition after `switch_scale` of the steps (`switch`)."""

    source_latents: np.ndarray  # [1, T, 64] clean (raw) source latents, silence-padded to T
    source_audio: np.ndarray  # [2, n] source waveform (padded when a window outpaints)
    window: tasks.Window | None = None
    strength: float | None = None  # start from the source noised to this level
    switch_scale: float | None = None  # coverConditioningScale
    switch: "Branch | None" = None

    def start(self, schedule, noise):
        if self.strength is None:
            return super().start(schedule, noise)
        # Start at the schedule point nearest `strength`, from the source noised to that level.
        first = tasks.cover_start(schedule, self.strength)
        return tasks.renoise(self.source_latents, float(schedule[first]), noise), schedule[first:]

    def switch_at(self, steps):
        return tasks.switch_step(steps, self.switch_scale) if self.switch is not None else None


@dataclass(frozen=True, eq=False)
class Cover(SourceEdit):
    """Cover: FSQ hints as the context (built by the conditioner); the hooks are SourceEdit's."""


@dataclass(frozen=True, eq=False)
class Repaint(SourceEdit):
    """A repaint window (tasks repaint and lego): official `_repaint_step_injection`,
    `_repaint_boundary_blend` and repaint_waveform_splice.py, configured by the repaint mode."""

    repaint: np.ndarray | None = None  # [T] bool, True = regenerate
    injection_ratio: float = 0.0
    crossfade_frames: int = 0
    wav_crossfade: float = 0.0
    splice_waveform: bool = False

    def injection(self, steps, noise):
        inject_steps = round(self.injection_ratio * steps)
        if not inject_steps:
            return None

        def post_step(k: int, x: np.ndarray, t_next: float) -> np.ndarray:
            if k < inject_steps:
                return tasks.inject(x, self.source_latents, self.repaint, t_next, noise)
            return x

        return post_step

    def crossfade(self, latents):
        if self.crossfade_frames > 0:
            return tasks.boundary_blend(latents, self.source_latents, self.repaint, self.crossfade_frames)
        return latents

    def splice(self, audio, sample_rate):
        if self.splice_waveform:
            return tasks.waveform_splice(audio, self.source_audio, self.window, sample_rate, self.wav_crossfade)
        return audio


PLAIN = Edit()
