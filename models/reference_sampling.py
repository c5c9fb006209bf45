"""Schedule, guidance (APG / CFG / ADG) and the Euler loop of the PyTorch reference, in torch.

Own torch maths after ace-step/ACE-Step-1.5 acestep/models/common/apg_guidance.py (`apg_forward`,
`cfg_forward`, `adg_forward`, `MomentumBuffer`) and `generate_audio`'s loop, never runtime/sampler.py
(docs/design.md, "One render"), so runtime-vs-reference parity compares two implementations.
Guidance runs in float64; the state x, the schedule and the Euler update in fp32.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch

GUIDANCE_KINDS = ("apg", "cfg", "adg")
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_ETA = 0.0
ADG_ANGLE_CLIP = 3.14 / 6  # the official code writes pi/6 as 3.14/6
_INTERVAL_SLACK = 1e-6


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """`value` as a float, or ValueError naming `name` (not a finite real, or out of bounds)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_integer(name: str, value, minimum: int) -> int:
    """`value` as an int >= minimum, or ValueError naming `name` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)




def schedule(steps: int, shift: float = 3.0) -> torch.Tensor:
    """t = linspace(1, 0, steps+1), shifted t ← s·t/(1+(s−1)·t); computed in float64, returned fp32."""
    steps = check_integer("steps", steps, 1)
    s = check_number("shift", shift, low=0.0, low_open=True)
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if s != 1.0:
        t = s * t / (1.0 + (s - 1.0) * t)
    return t.to(torch.float32)


def check_interval(interval) -> tuple[float, float]:
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise ValueError(f"cfg_interval must be (start, end), got {interval!r}")
    start, end = (check_number("cfg interval bound", v) for v in interval)
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"cfg_interval must satisfy 0 <= start <= end <= 1, got [{start}, {end}]")
    return start, end


def in_cfg_interval(t: float, interval: tuple[float, float]) -> bool:
    """Guide iff start ≤ p ≤ end with progress p = 1 − t (docs/design.md, "Decisions a user can see";
    the official `generate_audio` compares raw t)."""
    start, end = interval
    p = 1.0 - float(t)
    return start - _INTERVAL_SLACK <= p <= end + _INTERVAL_SLACK


class MomentumBuffer:
    """APG running average m ← d + μ·m, one per render (official MomentumBuffer), kept in float64."""

    def __init__(self, momentum: float = APG_MOMENTUM) -> None:
        self.momentum = float(momentum)
        self.average: torch.Tensor | None = None

    def update(self, diff: torch.Tensor) -> torch.Tensor:
        self.average = diff if self.average is None else diff + self.momentum * self.average
        return self.average


def apg(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float, buffer: MomentumBuffer | None = None,
        norm_threshold: float = APG_NORM_THRESHOLD, eta: float = APG_ETA) -> torch.Tensor:
    """Adaptive projected guidance over the TIME axis (dim 1 of [B, T, C]), float64 inside
    (official `apg_forward`, applied over the time axis)."""
    vc = v_cond.double()
    diff = vc - v_null.double()
    if buffer is not None:
        diff = buffer.update(diff)
    if norm_threshold > 0:
        # No epsilon, as upstream: a zero norm gives thr/0 = inf and min(1, inf) = 1.
        norm = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    unit = torch.nn.functional.normalize(vc, dim=1)  # v / max(‖v‖, 1e-12)
    parallel = (diff * unit).sum(dim=1, keepdim=True) * unit
    update = (diff - parallel) + eta * parallel
    return (vc + (scale - 1.0) * update).to(v_cond.dtype)


def cfg(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classic classifier-free guidance v_null + g·(v_cond − v_null), in float64."""
    vc, vn = v_cond.double(), v_null.double()
    return (vn + scale * (vc - vn)).to(v_cond.dtype)


def adg(x: torch.Tensor, v_cond: torch.Tensor, v_null: torch.Tensor, t: float, scale: float,
        angle_clip: float = ADG_ANGLE_CLIP) -> torch.Tensor:
    """Angle-based dynamic guidance on the x0 estimates, per token over channels (official
    `adg_forward`); needs t > 0."""
    if t <= 0:
        raise ValueError(f"ADG divides by t and needs t > 0, got {t}")
    w = max(scale - 1.0, 0.0) + 1e-3
    xs = x.double()
    x_c, x_u = xs - t * v_cond.double(), xs - t * v_null.double()
    cos = (x_c * x_u).sum(-1, keepdim=True) / (
        torch.linalg.vector_norm(x_c, dim=-1, keepdim=True) * torch.linalg.vector_norm(x_u, dim=-1, keepdim=True))
    theta = torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
    theta_new = torch.clamp(w * theta, -angle_clip, angle_clip)
    diff = x_c - x_u
    perp = diff - (diff * x_u).sum(-1, keepdim=True) / ((x_u * x_u).sum(-1, keepdim=True) + 1e-8) * x_u
    sin = torch.sin(theta)
    big = sin > 1e-3
    rotated = torch.where(big, perp * torch.sin(theta_new) / torch.where(big, sin, torch.ones_like(sin)), perp * w)
    x_new = torch.cos(theta_new) * x_c + rotated
    return ((xs - x_new) / t).to(v_cond.dtype)


class Step(NamedTuple):
    """What one Euler step did; `x` is the state after the step."""

    index: int
    total: int
    t_cur: float
    t_next: float
    guided: bool
    x: torch.Tensor


# velocity_fn(x [1,T,C] fp32, t, batch2) → (v_cond, v_null or None), both fp32.
VelocityFn = Callable[[torch.Tensor, float, bool], "tuple[torch.Tensor, torch.Tensor | None]"]


def euler_sample(x: torch.Tensor, sigmas: torch.Tensor, velocity_fn: VelocityFn, guidance: str = "apg",
                 scale: float = 7.0, interval: tuple[float, float] = (0.0, 1.0),
                 callback: Callable[[Step], None] | None = None,
                 after_step: Callable[[Step], torch.Tensor] | None = None) -> torch.Tensor:
    """Euler x ← x − v·(t_k − t_{k+1}) over `sigmas`; guidance only when scale > 1 and p = 1 − t is in the interval.

    `after_step(step)` may replace the state after each step (the editing tasks' source injection);
    `callback(step)` then sees the state the next step starts from.
    """
    if guidance not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance {guidance!r}; use one of: {', '.join(GUIDANCE_KINDS)}")
    interval = check_interval(interval)
    scale = check_number("cfg_scale", scale)
    buffer = MomentumBuffer()
    x = x.to(torch.float32)
    total = sigmas.numel() - 1
    for k in range(total):
        t_cur, t_next = float(sigmas[k]), float(sigmas[k + 1])
        guided = scale > 1.0 and in_cfg_interval(t_cur, interval)
        v_cond, v_null = velocity_fn(x, t_cur, guided)
        if not guided:
            v = v_cond
        elif guidance == "apg":
            v = apg(v_cond, v_null, scale, buffer)
        elif guidance == "cfg":
            v = cfg(v_cond, v_null, scale)
        else:
            v = adg(x, v_cond, v_null, t_cur, scale)
        # dt is the fp32 difference of the fp32 schedule values, as the numpy runtime forms it.
        dt = torch.tensor(t_cur - t_next, dtype=torch.float32, device=x.device)
        x = x - v.to(torch.float32) * dt
        if after_step is not None:
            x = after_step(Step(k, total, t_cur, t_next, guided, x))
        if callback is not None:
            callback(Step(k, total, t_cur, t_next, guided, x))
    return x

