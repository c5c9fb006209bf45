"""Flow-matching schedule, guidance (APG / CFG / ADG) as a closure over the model, and a plain Euler loop, in numpy.

The math follows ace-step/ACE-Step-1.5 acestep/models/common/apg_guidance.py (`apg_forward`,
`adg_forward`, `MomentumBuffer`) and the Euler loop of acestep/models/xl_base/
modeling_acestep_v15_xl_base.py `generate_audio`; docs/design.md "Decisions a user can see" lists
where we differ (the CFG interval reading).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .vocab import LATENT_CHANNELS

GUIDANCE_KINDS = ("apg", "cfg", "adg")

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
# The official code writes pi/6 as 3.14/6; we keep its number so ADG matches it.
ADG_ANGLE_CLIP = 3.14 / 6

# Drawn seeds stay in [1, 2^31 - 1]: an int32 that JSON/JS clients, C APIs and torch all carry
# exactly, and never 0 (which some clients read as "random").
_MAX_DRAWN_SEED = 2**31 - 1


def _check_number(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_pair(v_cond: np.ndarray, v_null: np.ndarray) -> None:
    if v_cond.ndim != 3 or v_cond.shape != v_null.shape:
        raise ValueError(f"velocities must both be [B, T, C]; got {v_cond.shape} and {v_null.shape}")


# ---------------------------------------------------------------------------------------------
# Schedule and step


def timesteps(steps: int, shift: float) -> np.ndarray:
    """t = linspace(1, 0, steps+1), then t ← s·t / (1 + (s−1)·t); float32, t[0] = 1 and t[-1] = 0."""
    steps = _check_int("steps", steps, 1)
    s = _check_number("shift", shift, positive=True)
    t = np.linspace(1.0, 0.0, steps + 1, dtype=np.float64)
    if s != 1.0:
        t = s * t / (1.0 + (s - 1.0) * t)
    return t.astype(np.float32)


def euler_step(x: np.ndarray, v: np.ndarray, t_cur: float, t_next: float) -> np.ndarray:
    """x_next = x − v·(t_cur − t_next) on the flow x_t = t·noise + (1−t)·x0."""
    dt = np.asarray(float(t_cur) - float(t_next), dtype=x.dtype)
    return x - v * dt


def in_cfg_interval(t: float, start: float = 0.0, end: float = 1.0) -> bool:
    """Guide iff start ≤ p ≤ end, with progress p = 1 − t (0 at the first step, 1 at the end).

    The official Python API compares the raw noise level t instead (start ≤ t ≤ end); the two
    rules agree only for [0, 1]. We follow the diffusers/Runware reading (docs/design.md,
    "Decisions a user can see"). Bounds are
    inclusive with a 1e-6 slack so that float32 schedule values land on the boundary they print as.
    """
    start = _check_number("cfg interval start", start)
    end = _check_number("cfg interval end", end)
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"cfg interval must satisfy 0 <= start <= end <= 1, got [{start}, {end}]")
    p = 1.0 - float(t)
    return start - 1e-6 <= p <= end + 1e-6


# ---------------------------------------------------------------------------------------------
# Guidance


@dataclass
class GuidanceState:
    """Per-render guidance state: the APG momentum buffer (float64, like the guided projection)."""

    momentum_buffer: np.ndarray | None = None

    def reset(self) -> None:
        self.momentum_buffer = None


def cfg(v_cond: np.ndarray, v_null: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance: v_null + g·(v_cond − v_null)."""
    _check_pair(v_cond, v_null)
    g = _check_number("guidance scale", scale)
    return (v_null + np.asarray(g, dtype=v_cond.dtype) * (v_cond - v_null)).astype(v_cond.dtype)


def apg(v_cond: np.ndarray, v_null: np.ndarray, scale: float, state: GuidanceState | None,
        momentum: float = APG_MOMENTUM, norm_threshold: float = APG_NORM_THRESHOLD,
        eta: float = 0.0) -> np.ndarray:
    """Adaptive projected guidance over the TIME axis (axis 1 of [B, T, C]), official `apg_forward`.

    d = v_cond − v_null; m ← d + μ·m (when `state` is given); d = m; d ← d·min(1, thr/‖d‖) per
    (batch, channel); split d against v_cond/max(‖v_cond‖, 1e-12) into d∥ + d⊥;
    v = v_cond + (g−1)·(d⊥ + η·d∥). All arithmetic runs in float64 and is cast back at the end.
    A zero ‖d‖ leaves d unscaled: the official code divides with no epsilon, and min(1, thr/0)
    there is min(1, inf) = 1 too, so this only removes the warning.
    """
    _check_pair(v_cond, v_null)
    g = _check_number("guidance scale", scale)
    mu = _check_number("APG momentum", momentum)
    thr = _check_number("APG norm threshold", norm_threshold)
    eta = _check_number("APG eta", eta)
    vc = v_cond.astype(np.float64)
    d = vc - v_null.astype(np.float64)
    if state is not None:
        m = state.momentum_buffer
        if m is not None and m.shape != d.shape:
            raise ValueError(f"APG momentum buffer has shape {m.shape}, velocities {d.shape}; reset the state per render")
        d = d if m is None else d + mu * m
        state.momentum_buffer = d.copy()
    if thr > 0:  # the official code skips the clip for a non-positive threshold
        n = np.linalg.norm(d, axis=1, keepdims=True)
        factor = np.minimum(1.0, np.divide(thr, n, out=np.ones_like(n), where=n > 0))
        d = d * factor
    u = vc / np.maximum(np.linalg.norm(vc, axis=1, keepdims=True), 1e-12)
    d_par = (d * u).sum(axis=1, keepdims=True) * u
    d_perp = d - d_par
    return (vc + (g - 1.0) * (d_perp + eta * d_par)).astype(v_cond.dtype)


def adg(v_cond: np.ndarray, v_null: np.ndarray, scale: float, x: np.ndarray, t: float,
        angle_clip: float = ADG_ANGLE_CLIP) -> np.ndarray:
    """Angle-based dynamic guidance on the x0 estimates, per token over channels (official `adg_forward`).

    It divides by t, so it is undefined at t = 0; the Euler loop never evaluates there.
    """
    _check_pair(v_cond, v_null)
    if x.shape != v_cond.shape:
        raise ValueError(f"x has shape {x.shape}, velocities {v_cond.shape}")
    g = _check_number("guidance scale", scale)
    t = _check_number("t", t)
    if t <= 0:
        raise ValueError(f"ADG needs t > 0 (it divides by t), got {t}")
    w = max(g - 1.0, 0.0) + 1e-3
    xs = x.astype(np.float64)
    x_c = xs - t * v_cond.astype(np.float64)
    x_u = xs - t * v_null.astype(np.float64)
    cos = (x_c * x_u).sum(-1, keepdims=True) / (
        np.linalg.norm(x_c, axis=-1, keepdims=True) * np.linalg.norm(x_u, axis=-1, keepdims=True))
    theta = np.arccos(np.clip(cos, -1.0 + 1e-6, 1.0 - 1e-6))
    theta_new = np.clip(w * theta, -angle_clip, angle_clip)
    diff = x_c - x_u
    # The official projection adds 1e-8 to ‖x̂_u‖² rather than clamping it.
    proj = (diff * x_u).sum(-1, keepdims=True) / ((x_u * x_u).sum(-1, keepdims=True) + 1e-8) * x_u
    perp = diff - proj
    sin = np.sin(theta)
    big = sin > 1e-3
    scaled_perp = np.where(big, perp * np.sin(theta_new) / np.where(big, sin, 1.0), perp * w)
    x_new = np.cos(theta_new) * x_c + scaled_perp
    return ((xs - x_new) / t).astype(v_cond.dtype)


def guide(kind: str, v_cond: np.ndarray, v_null: np.ndarray, scale: float,
          state: GuidanceState | None = None, x: np.ndarray | None = None,
          t: float | None = None) -> np.ndarray:
    """Dispatch to apg / cfg / adg; ADG also needs the current state x and noise level t."""
    if kind == "apg":
        return apg(v_cond, v_null, scale, state)
    if kind == "cfg":
        return cfg(v_cond, v_null, scale)
    if kind == "adg":
        if x is None or t is None:
            raise ValueError("ADG guidance needs the current latents x and noise level t")
        return adg(v_cond, v_null, scale, x, t)
    raise ValueError(f"unknown guidance kind {kind!r}; use one of: {', '.join(GUIDANCE_KINDS)}")


# ---------------------------------------------------------------------------------------------
# Noise and seeds


def initial_noise(seed: int, frames: int, channels: int = LATENT_CHANNELS) -> np.ndarray:
    """Standard-normal float32 noise [1, frames, channels] from numpy's PCG64 seeded with `seed`.

    Not bit-compatible with the official CUDA torch.randn (runtime/noise.py rebuilds that); it is stable across
    platforms and numpy versions that keep PCG64's stream.
    """
    seed = _check_int("seed", seed, 0)
    if seed >= 2**64:
        raise ValueError(f"seed must be < 2**64, got {seed}")
    frames = _check_int("frames", frames, 1)
    channels = _check_int("channels", channels, 1)
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((1, frames, channels), dtype=np.float32)


def draw_seed() -> int:
    """A fresh seed in [1, 2^31 − 1] from OS entropy (SeedSequence().entropy is a 128-bit int)."""
    return int(np.random.SeedSequence().entropy % _MAX_DRAWN_SEED) + 1


# ---------------------------------------------------------------------------------------------
# The guided model and the Euler loop (k-diffusion's shape: guidance wraps the model, the loop
# only integrates)


class Step(NamedTuple):
    """What one Euler step did: index, its t pair, whether guidance ran, and the new latents."""

    index: int
    total: int
    t_cur: float
    t_next: float
    guided: bool
    x: np.ndarray


# model(x, t, batch2) → (v_cond, v_null) when batch2, else (v_cond, None).
VelocityFn = Callable[[np.ndarray, float, bool], "tuple[np.ndarray, np.ndarray | None]"]
# guided(x, t) → (velocity, whether guidance ran).
GuidedFn = Callable[[np.ndarray, float], "tuple[np.ndarray, bool]"]


def guided_velocity(model: VelocityFn, guidance: str, scale: float, interval: tuple[float, float] = (0.0, 1.0),
                    state: GuidanceState | None = None) -> GuidedFn:
    """The model turned into one guided velocity (arguments are checked here, before any step).

    Guidance runs only when scale > 1 and t is inside the interval; otherwise the model is asked
    for the conditional branch alone and the APG momentum is left untouched.
    """
    if guidance not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance kind {guidance!r}; use one of: {', '.join(GUIDANCE_KINDS)}")
    scale = _check_number("guidance scale", scale)
    if len(interval) != 2:
        raise ValueError(f"cfg interval must be (start, end), got {interval!r}")
    start, end = float(interval[0]), float(interval[1])
    in_cfg_interval(1.0, start, end)  # validates the bounds
    state = GuidanceState() if state is None else state

    def velocity(x: np.ndarray, t: float) -> tuple[np.ndarray, bool]:
        guided = scale > 1.0 and in_cfg_interval(t, start, end)
        v_cond, v_null = model(x, t, guided)
        if not guided:
            return v_cond, False
        if v_null is None:
            raise ValueError("the model returned no unconditional velocity for a guided step")
        return guide(guidance, v_cond, v_null, scale, state, x=x, t=t), True

    return velocity


def euler(x: np.ndarray, schedule: np.ndarray, velocity: GuidedFn,
          post_step: Callable[[int, np.ndarray, float], np.ndarray] | None = None) -> Iterator[Step]:
    """Euler over `schedule`, yielding after every step; `post_step(k, x, t_next)` may replace the
    state after step k (repaint injection). The schedule is checked before the first step."""
    schedule = np.asarray(schedule, dtype=np.float32)
    if schedule.ndim != 1 or schedule.size < 2:
        raise ValueError("schedule must be a 1-D array of at least two noise levels")
    return _euler(np.asarray(x, dtype=np.float32), schedule, velocity, post_step)


def _euler(x, schedule, velocity, post_step) -> Iterator[Step]:
    total = schedule.size - 1
    for k in range(total):
        t_cur, t_next = float(schedule[k]), float(schedule[k + 1])
        v, guided = velocity(x, t_cur)
        x = euler_step(x, np.asarray(v, dtype=np.float32), t_cur, t_next)
        if post_step is not None:
            x = post_step(k, x, t_next)
        yield Step(k, total, t_cur, t_next, guided, x)
