"""PyTorch reference text2music pipeline (models/reference.py) on a tiny random checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from acestep_edge.models.reference import (  # noqa: E402
    PEAK_TARGET,
    ReferencePipeline,
    ReferenceParams,
    RenderError,
    check_latents,
    finish_audio,
    latent_frames,
)
from acestep_edge.models.reference_sampling import MomentumBuffer, apg, euler_sample, schedule  # noqa: E402

pytestmark = pytest.mark.export  # torch, onnx and the export side

STEPS = 4  # shift 3 → t = [1, 0.9, 0.75, 0.5, 0], progress p = [0, 0.1, 0.25, 0.5]


@pytest.fixture(scope="module")
def pipe(tiny_official):
    return ReferencePipeline.from_checkpoint(tiny_official, dtype=torch.float32, layout="official")


def _noise(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, frames, 64, generator=torch.Generator().manual_seed(seed))


def _params(**kw) -> ReferenceParams:
    base = dict(caption="An upbeat pop song with bright synths", lyrics="[Verse]\nhello world",
                duration=10.0, steps=STEPS, bpm=120, key_scale="C major", time_signature="4/4")
    base.update(kw)
    return ReferenceParams(**base)


@pytest.fixture(scope="module")
def states(pipe):
    return pipe.encode_prompts(_params())[0]


def _sample(pipe, states, record=None, seed=0, **kw):
    params = _params(**kw)
    steps = []
    out = pipe.sample(params, _noise(params.frames, seed), states, callback=steps.append)
    if record is not None:
        record.extend(steps)
    return out


# ----------------------------------------------------------------------------- whole render


def test_render_is_deterministic_and_well_formed(pipe):
    params = _params()
    a = pipe.render(params, _noise(params.frames))
    b = pipe.render(params, _noise(params.frames))
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.sample_rate == 48000
    assert a.latents.shape == (1, 250, 64) and a.latents.dtype == np.float32
    assert a.audio.shape == (2, 480000) and a.audio.dtype == np.float32
    assert abs(float(np.abs(a.audio).max()) - 10 ** (-1 / 20)) < 1e-6
    assert not np.array_equal(a.audio[0], a.audio[1])  # really stereo, not a copied channel


@pytest.mark.parametrize("duration,frames", [(12.34, 307), (3.0, 128)])
def test_render_length_is_the_requested_duration(pipe, duration, frames):
    params = _params(duration=duration, steps=2)
    assert params.frames == frames == latent_frames(duration)
    result = pipe.render(params, _noise(frames))
    samples = round(duration * 48000)
    assert result.audio.shape == (2, samples)
    assert abs(float(np.abs(result.audio).max()) - PEAK_TARGET) < 1e-6
    if frames * 1920 < samples:  # 12.34 s: 307 frames are 589 440 samples; the rest is zero padding
        assert np.all(result.audio[:, frames * 1920:] == 0)
        assert np.abs(result.audio[:, frames * 1920 - 1920: frames * 1920]).max() > 0


def test_fifty_step_render_on_a_short_clip(pipe):
    params = _params(duration=4.0, steps=50)
    seen = []
    result = pipe.render(params, _noise(128, seed=3), callback=seen.append)
    assert [s.index for s in seen] == list(range(50)) and all(s.guided for s in seen)
    assert seen[-1].t_next == 0.0
    assert result.latents.shape == (1, 128, 64) and np.isfinite(result.latents).all()
    assert result.audio.shape == (2, 192000)
    assert abs(float(np.abs(result.audio).max()) - PEAK_TARGET) < 1e-6


def test_prompts_follow_the_templates(pipe):
    _, info = pipe.encode_prompts(_params(lyrics="", duration=12.34))
    assert info.caption_prompt.startswith("# Instruction\nFill the audio semantic mask based on the given conditions:\n")
    assert "- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 12 seconds\n" in info.caption_prompt
    assert info.lyric_prompt == "# Languages\nen\n\n# Lyric\n<|endoftext|>"
    np.testing.assert_array_equal(info.caption_ids, pipe.tokenizer.encode_caption(info.caption_prompt).ids)
    assert not info.caption_truncated and not info.lyric_truncated


def test_conditioning_reaches_the_latents(pipe, states):
    other = pipe.encode_prompts(_params(caption="A slow acoustic ballad", lyrics="[Chorus]\nla la"))[0]
    assert other.shape[-1] == states.shape[-1] and not torch.equal(other[:, -4:], states[:, -4:])
    a, b = _sample(pipe, states), _sample(pipe, other)
    assert not torch.equal(a, b)


# ----------------------------------------------------------------------------- sampling


def test_different_noise_gives_different_latents(pipe, states):
    a, b = _sample(pipe, states, seed=0), _sample(pipe, states, seed=1)
    assert (a - b).abs().max() > 1e-2


def test_guidance_kinds_differ(pipe, states):
    out = {g: _sample(pipe, states, guidance=g) for g in ("apg", "cfg", "adg")}
    plain = _sample(pipe, states, cfg_scale=1.0)
    for g, lat in out.items():
        assert torch.isfinite(lat).all()
        assert (lat - plain).abs().max() > 1e-3, g
    assert (out["apg"] - out["cfg"]).abs().max() > 1e-3
    assert (out["adg"] - out["cfg"]).abs().max() > 1e-3


def _spy_batches(pipe, monkeypatch):
    batches = []
    decoder = pipe.acestep.decoder
    original = type(decoder).forward

    def spy(self, x, *args, **kw):
        batches.append(x.shape[0])
        return original(self, x, *args, **kw)

    monkeypatch.setattr(type(decoder), "forward", spy)
    return batches


def test_empty_interval_equals_unguided_run(pipe, states, monkeypatch):
    batches = _spy_batches(pipe, monkeypatch)
    seen = []
    # p = 1 is never evaluated (the last model call is at t = 0.5 → p = 0.5), so nothing is guided.
    none = _sample(pipe, states, seen, cfg_interval=(1.0, 1.0))
    assert batches == [1] * STEPS and not any(s.guided for s in seen)
    batches.clear()
    plain = _sample(pipe, states, cfg_scale=1.0)
    assert batches == [1] * STEPS
    torch.testing.assert_close(none, plain, rtol=0, atol=0)
    guided = _sample(pipe, states)
    assert (guided - plain).abs().max() > 1e-3


def test_partial_interval_skips_guidance_outside(pipe, states, monkeypatch):
    full_steps, part_steps = [], []
    full = _sample(pipe, states, full_steps)
    batches = _spy_batches(pipe, monkeypatch)
    part = _sample(pipe, states, part_steps, cfg_interval=(0.0, 0.3))
    assert [s.guided for s in part_steps] == [True, True, True, False]
    assert batches == [2, 2, 2, 1]
    for a, b in zip(full_steps[:3], part_steps[:3]):
        assert torch.equal(a.x, b.x)  # identical while both are guided
    assert (full - part).abs().max() > 1e-4
    late = []
    _sample(pipe, states, late, cfg_interval=(0.2, 1.0))
    assert [s.guided for s in late] == [False, False, True, True]


def test_bad_noise_is_rejected(pipe, states):
    params = _params()
    with pytest.raises(ValueError, match="shape"):
        pipe.sample(params, _noise(params.frames + 1), states)
    bad = _noise(params.frames)
    bad[0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        pipe.sample(params, bad, states)


@pytest.mark.parametrize("kw", [dict(guidance="pag"), dict(cfg_interval=(0.6, 0.2)), dict(cfg_interval=(0, 1.5)),
                                dict(duration=0.0), dict(duration=601.0), dict(steps=0), dict(shift=0.0),
                                dict(cfg_scale=float("nan")), dict(vae_chunk=0)])
def test_bad_params_are_rejected(kw):
    with pytest.raises(ValueError):
        _params(**kw)


def test_half_precision_runs_with_fp32_condition_encoder(tiny_official):
    half = ReferencePipeline.from_checkpoint(tiny_official, dtype=torch.float16)
    ref = ReferencePipeline.from_checkpoint(tiny_official)
    assert half.dtype == torch.float16 and half.encoder_dtype == torch.float32
    params = _params(duration=4.0, steps=2)
    lat_h = half.sample(params, _noise(128), half.encode_prompts(params)[0])
    lat_f = ref.sample(params, _noise(128), ref.encode_prompts(params)[0])
    assert lat_h.dtype == torch.float32 and torch.isfinite(lat_h).all()
    assert not torch.equal(lat_h, lat_f)
    corr = np.corrcoef(lat_h.numpy().ravel(), lat_f.numpy().ravel())[0, 1]
    assert corr > 0.99


# ----------------------------------------------------------------------------- guards and audio post-processing


def test_nan_and_zero_latents_raise(pipe):
    nan = torch.zeros(1, 128, 64)
    nan[0, 7, 3] = float("nan")
    for bad in (nan, torch.zeros(1, 128, 64), torch.full((1, 128, 64), float("inf"))):
        with pytest.raises(RenderError):
            check_latents(bad)
        with pytest.raises(RenderError):
            pipe.decode(bad)


def test_render_raises_when_the_dit_overflows(pipe, monkeypatch):
    def broken(self, x, *args, **kw):
        return torch.full_like(x, float("nan"))

    monkeypatch.setattr(type(pipe.acestep.decoder), "forward", broken)
    with pytest.raises(RenderError, match="NaN"):
        pipe.render(_params(duration=4.0, steps=2), _noise(128))


def test_finish_audio_fits_anticlips_and_normalises():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((2, 1000)).astype(np.float32)
    audio[1, 10] = 8.0
    out = finish_audio(audio, 900, normalize=False)  # anti-clip only: divided by its peak
    assert out.shape == (2, 900)
    np.testing.assert_allclose(out, audio[:, :900] / 8.0, rtol=1e-6)
    norm = finish_audio(audio, 1200)
    assert norm.shape == (2, 1200) and np.all(norm[:, 1000:] == 0)
    assert abs(float(np.abs(norm).max()) - PEAK_TARGET) < 1e-6
    quiet = np.full((2, 10), 1e-7, dtype=np.float32)
    np.testing.assert_array_equal(finish_audio(quiet, 10), quiet)  # below 1e-6: left alone
    soft = 0.1 * audio / np.abs(audio).max()
    np.testing.assert_allclose(finish_audio(soft, 1000, normalize=False), soft, rtol=1e-6)


# ----------------------------------------------------------------------------- independent float64 re-derivations


def _apg_np(vc, vn, g, m, mu=-0.75, thr=2.5):
    """APG (ace-step/ACE-Step-1.5 acestep/models/common/apg_guidance.py `apg_forward`), written out again
    in float64 numpy; returns (v, new momentum)."""
    d = vc - vn
    m = d if m is None else d + mu * m
    d = m.copy()
    n = np.sqrt((d ** 2).sum(axis=1, keepdims=True))
    d = d * np.minimum(1.0, thr / n)
    u = vc / np.maximum(np.sqrt((vc ** 2).sum(axis=1, keepdims=True)), 1e-12)
    d_perp = d - (d * u).sum(axis=1, keepdims=True) * u
    return vc + (g - 1.0) * d_perp, m


def test_apg_matches_a_numpy_rederivation_over_steps():
    rng = np.random.default_rng(42)
    buffer, m = MomentumBuffer(), None
    clipped = unclipped = 0
    for step in range(6):
        # Small differences first, then large ones, so both sides of the 2.5 norm clip are exercised.
        spread = 0.02 if step < 3 else 1.0
        vc = rng.standard_normal((2, 37, 64))
        vn = vc + spread * rng.standard_normal((2, 37, 64))
        expected, m = _apg_np(vc, vn, 7.0, m)
        norms = np.sqrt(((m) ** 2).sum(axis=1))
        clipped += int((norms > 2.5).sum())
        unclipped += int((norms <= 2.5).sum())
        got = apg(torch.from_numpy(vc), torch.from_numpy(vn), 7.0, buffer)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert clipped > 0 and unclipped > 0
    # The guided velocity loses its component along v_cond's time profile (η = 0).
    vc = rng.standard_normal((1, 20, 64))
    vn = vc + 0.1 * rng.standard_normal((1, 20, 64))
    out = apg(torch.from_numpy(vc), torch.from_numpy(vn), 3.0).numpy()
    np.testing.assert_allclose(((out - vc) * vc).sum(axis=1), 0.0, atol=1e-10)


def test_apg_agrees_with_the_numpy_runtime():
    from acestep_edge.runtime.sampler import GuidanceState, apg as runtime_apg

    rng = np.random.default_rng(5)
    state, buffer = GuidanceState(), MomentumBuffer()
    for _ in range(3):
        vc = rng.standard_normal((1, 50, 64)).astype(np.float32)
        vn = (vc + 0.5 * rng.standard_normal((1, 50, 64))).astype(np.float32)
        ours = apg(torch.from_numpy(vc), torch.from_numpy(vn), 7.0, buffer).numpy()
        np.testing.assert_allclose(ours, runtime_apg(vc, vn, 7.0, state), rtol=1e-5, atol=1e-5)


def test_euler_loop_matches_a_numpy_rederivation():
    """Schedule, CFG interval on p = 1 − t, momentum only on guided steps, Euler — all in float64 numpy."""
    rng = np.random.default_rng(1)
    a_c, a_u = 0.3 * rng.standard_normal((64, 64)), 0.3 * rng.standard_normal((64, 64))
    b_c, b_u = rng.standard_normal((1, 1, 64)), rng.standard_normal((1, 1, 64))
    x0 = rng.standard_normal((1, 40, 64))
    steps, shift, g, interval = 8, 3.0, 5.0, (0.2, 0.6)

    def velocity(x, t, batch2):
        xd = x.double()
        vc = xd @ torch.from_numpy(a_c) * t + torch.from_numpy(b_c)
        vn = xd @ torch.from_numpy(a_u) * t + torch.from_numpy(b_u)
        return vc.float(), (vn.float() if batch2 else None)

    seen = []
    got = euler_sample(torch.from_numpy(x0).float(), schedule(steps, shift), velocity, "apg", g, interval,
                       seen.append)

    lin = np.linspace(1.0, 0.0, steps + 1)
    t = shift * lin / (1 + (shift - 1) * lin)
    x, m, guided = x0.copy(), None, []
    for k in range(steps):
        vc = x @ a_c * t[k] + b_c
        vn = x @ a_u * t[k] + b_u
        p = 1.0 - t[k]
        if interval[0] <= p <= interval[1]:
            v, m = _apg_np(vc, vn, g, m)
            guided.append(True)
        else:
            v = vc
            guided.append(False)
        x = x - v * (t[k] - t[k + 1])
    assert [s.guided for s in seen] == guided
    assert guided[:2] == [False, False] and True in guided and guided[-1] is False
    np.testing.assert_allclose(got.numpy(), x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(schedule(steps, shift).numpy(), t.astype(np.float32), rtol=0, atol=1e-7)
    assert math.isclose(float(schedule(50, 3.0)[25]), 0.75)
