"""Schedule, Euler step, guidance math, CFG interval, noise and the step loop (runtime/sampler.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from acestep_edge.runtime.sampler import (
    GuidanceState,
    adg,
    apg,
    cfg,
    draw_seed,
    euler,
    euler_step,
    guide,
    guided_velocity,
    in_cfg_interval,
    initial_noise,
    timesteps,
)

# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (8, 3.0), (50, 3.0), (50, 1.0), (27, 0.5)])
def test_schedule_endpoints_and_monotone(steps, shift):
    t = timesteps(steps, shift)
    assert t.dtype == np.float32 and t.shape == (steps + 1,)
    assert t[0] == 1.0 and t[-1] == 0.0
    assert np.all(np.diff(t) < 0)


def test_schedule_shift_one_is_linspace():
    np.testing.assert_array_equal(timesteps(50, 1.0), np.linspace(1, 0, 51).astype(np.float32))


def test_schedule_mid_values_follow_formula():
    t = timesteps(50, 3.0)
    assert t[25] == np.float32(0.75)  # s·0.5/(1+(s−1)·0.5) = 1.5/2
    raw = 1 - 10 / 50
    assert t[10] == np.float32(3 * raw / (1 + 2 * raw))
    assert t[10] > np.float32(raw)  # shift > 1 spends more steps at high noise


@pytest.mark.parametrize("steps,shift", [(0, 3.0), (2.5, 3.0), (True, 3.0), (10, 0.0), (10, -1.0), (10, float("inf"))])
def test_schedule_rejects_bad_arguments(steps, shift):
    with pytest.raises(ValueError):
        timesteps(steps, shift)


def test_euler_step():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, 4)).astype(np.float32)
    v = rng.standard_normal((1, 5, 4)).astype(np.float32)
    out = euler_step(x, v, 0.75, 0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x - 0.25 * v, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(euler_step(x, v, 0.5, 0.5), x)


# ----------------------------------------------------------------------------- guidance


def _apg_reference(steps_inputs, g, mu=-0.75, thr=2.5, eta=0.0):
    """Independent APG: plain Python loops per (batch, channel), float64, momentum across steps."""
    outputs, m = [], None
    for v_c, v_u in steps_inputs:
        b, t, c = v_c.shape
        vc = v_c.astype(np.float64)
        d = vc - v_u.astype(np.float64)
        m = d.copy() if m is None else d + mu * m
        out = np.empty_like(vc)
        for i in range(b):
            for j in range(c):
                dd = m[i, :, j].copy()
                n = math.sqrt(sum(float(a) * float(a) for a in dd))
                if n > 0:
                    dd *= min(1.0, thr / n)
                col = vc[i, :, j]
                cn = max(math.sqrt(sum(float(a) * float(a) for a in col)), 1e-12)
                u = col / cn
                par = sum(float(p) * float(q) for p, q in zip(dd, u)) * u
                out[i, :, j] = col + (g - 1) * ((dd - par) + eta * par)
        outputs.append(out)
    return outputs


def _velocities(rng, b=2, t=24, c=6, steps=4):
    pairs = []
    for _ in range(steps):
        v_c = rng.standard_normal((b, t, c)).astype(np.float32)
        v_u = v_c - rng.standard_normal((b, t, c)).astype(np.float32)
        v_u[:, :, 0] = v_c[:, :, 0] - 0.01  # one channel with ‖d‖ ≈ 0.05 < 2.5: no clip there
        pairs.append((v_c, v_u))
    return pairs


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_apg_matches_independent_derivation_over_steps(eta):
    pairs = _velocities(np.random.default_rng(1))
    want = _apg_reference(pairs, g=7.0, eta=eta)
    state = GuidanceState()
    for (v_c, v_u), ref in zip(pairs, want):
        got = apg(v_c, v_u, 7.0, state, eta=eta)
        assert got.dtype == np.float32 and got.shape == v_c.shape
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
    # Without momentum the result differs from the momentum run after the first step.
    no_momentum = apg(pairs[1][0], pairs[1][1], 7.0, None, eta=eta)
    assert np.abs(no_momentum - want[1]).max() > 1e-2


def test_apg_momentum_buffer_update():
    pairs = _velocities(np.random.default_rng(2), steps=2)
    state = GuidanceState()
    apg(*pairs[0], 3.0, state)
    d1 = pairs[0][0].astype(np.float64) - pairs[0][1]
    np.testing.assert_allclose(state.momentum_buffer, d1)
    apg(*pairs[1], 3.0, state)
    d2 = pairs[1][0].astype(np.float64) - pairs[1][1]
    np.testing.assert_allclose(state.momentum_buffer, d2 - 0.75 * d1)
    state.reset()
    assert state.momentum_buffer is None
    with pytest.raises(ValueError, match="reset"):
        apg(*pairs[0], 3.0, GuidanceState(np.zeros((1, 2, 3))))


def test_apg_norm_clip_engages_above_threshold_only():
    rng = np.random.default_rng(3)
    v_c = rng.standard_normal((1, 32, 4)).astype(np.float32)
    d = rng.standard_normal((1, 32, 4))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d *= np.array([0.5, 2.0, 5.0, 40.0])  # per-channel ‖d‖: two below 2.5, two above
    v_u = (v_c - d).astype(np.float32)
    d_true = v_c.astype(np.float64) - v_u
    # g = 2, η = 1: v − v_cond is exactly the clipped difference.
    out = apg(v_c, v_u, 2.0, None, eta=1.0)
    norms = np.linalg.norm(out.astype(np.float64) - v_c, axis=1)[0]
    np.testing.assert_allclose(norms, np.minimum(np.linalg.norm(d_true, axis=1)[0], 2.5), rtol=1e-4)
    assert norms[3] < 2.6 and norms[2] < 2.6 and norms[1] > 1.9
    # A non-positive threshold disables the clip, as the official code does.
    unclipped = apg(v_c, v_u, 2.0, None, norm_threshold=0.0, eta=1.0)
    np.testing.assert_allclose(unclipped - v_c, d_true, rtol=1e-4, atol=1e-5)


def test_apg_eta_zero_removes_parallel_component():
    rng = np.random.default_rng(4)
    v_c = (rng.standard_normal((2, 40, 8)) + 1.5).astype(np.float32)
    v_u = (v_c + rng.standard_normal((2, 40, 8))).astype(np.float32)
    out = apg(v_c, v_u, 7.0, GuidanceState())
    delta = out.astype(np.float64) - v_c
    dots = (delta * v_c).sum(axis=1)
    scale = np.linalg.norm(delta, axis=1) * np.linalg.norm(v_c.astype(np.float64), axis=1)
    assert np.all(np.abs(dots) <= 1e-5 * scale)
    assert np.all(np.linalg.norm(delta, axis=1) > 1e-2)  # guidance did move v


def test_apg_zero_difference_is_identity_without_warnings():
    v = np.random.default_rng(5).standard_normal((1, 10, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = apg(v, v.copy(), 7.0, GuidanceState())
    np.testing.assert_array_equal(out, v)


def test_apg_scale_one_returns_cond():
    pairs = _velocities(np.random.default_rng(6), steps=1)
    np.testing.assert_allclose(apg(*pairs[0], 1.0, None), pairs[0][0], rtol=0, atol=1e-6)


def test_cfg_formula():
    rng = np.random.default_rng(7)
    v_c = rng.standard_normal((1, 6, 4)).astype(np.float32)
    v_u = rng.standard_normal((1, 6, 4)).astype(np.float32)
    out = cfg(v_c, v_u, 4.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, v_u + 4.5 * (v_c - v_u), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cfg(v_c, v_u, 1.0), v_c, atol=1e-6)


def _adg_reference(x, v_c, v_u, t, g, clip=3.14 / 6):
    """Independent ADG: per token over channels, in Python floats."""
    out = np.empty(x.shape, dtype=np.float64)
    w = max(g - 1, 0) + 1e-3
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            xc = [float(a) - t * float(b) for a, b in zip(x[i, k], v_c[i, k])]
            xu = [float(a) - t * float(b) for a, b in zip(x[i, k], v_u[i, k])]
            dot = sum(a * b for a, b in zip(xc, xu))
            nc, nu = math.sqrt(sum(a * a for a in xc)), math.sqrt(sum(a * a for a in xu))
            theta = math.acos(min(max(dot / (nc * nu), -1 + 1e-6), 1 - 1e-6))
            theta_new = min(max(w * theta, -clip), clip)
            diff = [a - b for a, b in zip(xc, xu)]
            coef = sum(a * b for a, b in zip(diff, xu)) / (nu * nu + 1e-8)
            perp = [a - coef * b for a, b in zip(diff, xu)]
            if math.sin(theta) > 1e-3:
                p = [a * math.sin(theta_new) / math.sin(theta) for a in perp]
            else:
                p = [a * w for a in perp]
            new = [math.cos(theta_new) * a + b for a, b in zip(xc, p)]
            out[i, k] = [(float(a) - b) / t for a, b in zip(x[i, k], new)]
    return out


def test_adg_matches_independent_derivation():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 7, 16)).astype(np.float32)
    v_c = rng.standard_normal((1, 7, 16)).astype(np.float32)
    v_u = (v_c + 0.3 * rng.standard_normal((1, 7, 16))).astype(np.float32)
    v_u[0, 3] = v_c[0, 3]  # a token with θ ≈ 0 takes the small-angle branch
    got = adg(v_c, v_u, 5.0, x, 0.6)
    np.testing.assert_allclose(got, _adg_reference(x, v_c, v_u, 0.6, 5.0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="t > 0"):
        adg(v_c, v_u, 5.0, x, 0.0)


def test_guide_dispatch():
    rng = np.random.default_rng(9)
    v_c, v_u, x = (rng.standard_normal((1, 8, 4)).astype(np.float32) for _ in range(3))
    np.testing.assert_array_equal(guide("cfg", v_c, v_u, 3.0), cfg(v_c, v_u, 3.0))
    np.testing.assert_array_equal(guide("apg", v_c, v_u, 3.0, GuidanceState()), apg(v_c, v_u, 3.0, None))
    np.testing.assert_array_equal(guide("adg", v_c, v_u, 3.0, x=x, t=0.5), adg(v_c, v_u, 3.0, x, 0.5))
    with pytest.raises(ValueError, match="needs"):
        guide("adg", v_c, v_u, 3.0)
    with pytest.raises(ValueError, match="unknown guidance"):
        guide("pag", v_c, v_u, 3.0)
    with pytest.raises(ValueError, match="B, T, C"):
        guide("cfg", v_c, v_u[:, :4], 3.0)


# ----------------------------------------------------------------------------- CFG interval


def test_interval_uses_progress_not_raw_t():
    # t = 0.8 is progress 0.2: inside [0, 0.3]; the official raw-t rule would say outside.
    assert in_cfg_interval(0.8, 0.0, 0.3)
    assert not in_cfg_interval(0.2, 0.0, 0.3)
    assert in_cfg_interval(0.2, 0.7, 1.0)
    assert not in_cfg_interval(0.8, 0.7, 1.0)


def test_interval_boundaries_inclusive():
    assert in_cfg_interval(1.0, 0.0, 0.0)  # first step, p = 0
    assert in_cfg_interval(0.0, 1.0, 1.0)  # p = 1
    assert in_cfg_interval(0.5, 0.5, 0.5)
    assert in_cfg_interval(float(np.float32(0.7)), 0.0, 0.3)  # float32 t that prints as 0.7
    assert in_cfg_interval(float(np.float32(0.3)), 0.7, 1.0)
    assert not in_cfg_interval(0.69, 0.0, 0.3)
    assert all(in_cfg_interval(t) for t in timesteps(50, 3.0))


@pytest.mark.parametrize("start,end", [(0.6, 0.4), (-0.1, 1.0), (0.0, 1.5), (float("nan"), 1.0)])
def test_interval_rejects_bad_bounds(start, end):
    with pytest.raises(ValueError, match="interval"):
        in_cfg_interval(0.5, start, end)


# ----------------------------------------------------------------------------- noise and seeds


def test_noise_deterministic_shape_dtype():
    a = initial_noise(1234, 300)
    assert a.shape == (1, 300, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, initial_noise(1234, 300))
    assert not np.array_equal(a, initial_noise(1235, 300))
    want = np.random.Generator(np.random.PCG64(1234)).standard_normal((1, 300, 64), dtype=np.float32)
    np.testing.assert_array_equal(a, want)
    assert abs(float(a.mean())) < 0.02 and abs(float(a.std()) - 1) < 0.02
    assert initial_noise(7, 5, channels=3).shape == (1, 5, 3)
    initial_noise(2**63 - 1, 2)


@pytest.mark.parametrize("seed,frames", [(-1, 10), (1.5, 10), (2**64, 10), (True, 10), (1, 0)])
def test_noise_rejects_bad_arguments(seed, frames):
    with pytest.raises(ValueError):
        initial_noise(seed, frames)


def test_draw_seed_range():
    seeds = {draw_seed() for _ in range(64)}
    assert all(isinstance(s, int) and 1 <= s <= 2**31 - 1 for s in seeds)
    assert len(seeds) > 60


# ----------------------------------------------------------------------------- step loop


class FakeDiT:
    """A velocity field with a known conditional/unconditional split; records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, batch2):
        self.calls.append((t, batch2))
        v_c = (0.5 * x + t).astype(np.float32)
        return v_c, ((0.2 * x - t).astype(np.float32) if batch2 else None)


def test_sampling_loop_interval_batching_and_momentum():
    x0 = initial_noise(11, 16, channels=4)
    sched = timesteps(10, 3.0)
    dit = FakeDiT()
    state = GuidanceState()
    steps = list(euler(x0, sched, guided_velocity(dit, "apg", 7.0, (0.0, 0.5), state)))
    assert len(steps) == 10 and [s.index for s in steps] == list(range(10))
    want_guided = [in_cfg_interval(float(t), 0.0, 0.5) for t in sched[:-1]]
    assert 0 < sum(want_guided) < 10
    assert [s.guided for s in steps] == want_guided == [b for _, b in dit.calls]

    # Manual loop: APG only inside the interval, momentum only updated there.
    x, ref_state = x0.copy(), GuidanceState()
    for k in range(10):
        t = float(sched[k])
        v_c, v_u = dit(x, t, True)
        v = apg(v_c, v_u, 7.0, ref_state) if want_guided[k] else v_c
        x = euler_step(x, v, t, float(sched[k + 1]))
    np.testing.assert_allclose(steps[-1].x, x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.momentum_buffer, ref_state.momentum_buffer)


def test_sampling_loop_scale_one_never_batches():
    dit = FakeDiT()
    list(euler(initial_noise(1, 8, 4), timesteps(5, 1.0), guided_velocity(dit, "cfg", 1.0)))
    assert [b for _, b in dit.calls] == [False] * 5


def test_euler_steps_and_post_step():
    steps = list(euler(initial_noise(2, 8, 4), timesteps(4, 3.0), guided_velocity(FakeDiT(), "adg", 3.0)))
    assert len(steps) == 4 and steps[-1].t_next == 0.0 and all(s.guided for s in steps)
    # post_step replaces the state after each step; the next step starts from what it returned.
    seen = []

    def post_step(k, x, t_next):
        seen.append((k, t_next))
        return np.zeros_like(x)

    dit = FakeDiT()
    out = list(euler(initial_noise(2, 8, 4), timesteps(3, 3.0), guided_velocity(dit, "cfg", 1.0), post_step))
    assert [k for k, _ in seen] == [0, 1, 2] and not np.any(out[-1].x)
    assert dit.calls[1][0] == seen[0][1]


def test_sampling_loop_validates_up_front():
    x = initial_noise(3, 8, 4)
    with pytest.raises(ValueError, match="guidance"):
        guided_velocity(FakeDiT(), "pag", 7.0)
    with pytest.raises(ValueError, match="interval"):
        guided_velocity(FakeDiT(), "apg", 7.0, (0.8, 0.2))
    with pytest.raises(ValueError, match="schedule"):
        euler(x, np.array([1.0], np.float32), guided_velocity(FakeDiT(), "apg", 7.0))
    with pytest.raises(ValueError, match="unconditional"):
        list(euler(x, timesteps(4, 3.0), guided_velocity(lambda x, t, b: (x, None), "apg", 7.0)))
