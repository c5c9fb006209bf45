"""Noise sources without torch: Philox4x32-10 known answers, published CUDA values, the grid-stride
mapping at each GPU's one-wave cap, the exact float32 FMA, and the 600-s draw time."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest

from acestep_edge.runtime import noise, noise_cuda, sampler
from acestep_edge.runtime.fp32 import F32, fma, mul_rz, to_bfloat16

# Random123's known-answer tests for Philox4x32-10: (counter, key (lo, hi), output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# torch.manual_seed(0); torch.randn(8, 8, device="cuda"), as published to 4 decimals.
CUDA_SEED0_8X8 = """
-0.9247 -0.4253 -2.6438  0.1452 -0.1209 -0.5797 -0.6229 -0.3284
-1.0745 -0.3631 -1.6711  2.2655  0.3117 -0.1842  1.2866  1.1820
-0.1271  1.2169  1.4353  1.0605 -0.4941 -1.4244 -0.7244 -1.2973
 0.0697 -0.0074  1.8969  0.6878 -0.0779 -0.8373  1.3506 -0.2879
-0.5965 -0.3283 -0.9086 -0.8059 -0.7407 -0.0504  0.5435  1.5150
 0.0141  0.4532  1.6349  0.7124 -0.1806  1.0252 -1.4622 -0.7554
-0.1836  0.3824  0.3918 -0.0830  0.8971 -1.1123  0.1116  0.4863
-0.5499 -0.3231 -0.5469  0.9049  0.2837  0.1210  0.4730 -1.0823
"""

# One-wave caps of [1, T, 64] draws in elements (SMs · threads per SM rounded to blocks of 256).
WAVE_CAPS = {"t4": 40_960, "l4": 89_088, "a10g": 122_880, "rtx3090": 125_952, "rtx4090": 196_608,
             "l40s": 218_112, "a100": 221_184, "h100-pcie": 233_472, "h100": 270_336, "h200": 270_336,
             "rtx-pro-6000": 288_768}


@pytest.mark.parametrize("counter,key,want", PHILOX_KAT)
def test_philox_known_answers(counter, key, want):
    got = noise_cuda.philox4x32_10(counter, key)
    assert tuple(int(w) for w in got) == want


def test_philox_vectorised_equals_scalar():
    idx = np.array([0, 1, 7, 2**32 - 1], dtype=np.uint64)
    many = noise_cuda.philox4x32_10((3, 0, idx, 0), (0xDEADBEEF, 5))
    for i, v in enumerate(idx):
        one = noise_cuda.philox4x32_10((3, 0, int(v), 0), (0xDEADBEEF, 5))
        assert tuple(int(w[i]) for w in many) == tuple(int(w) for w in one)


def test_cuda_published_8x8_values():
    want = np.array(CUDA_SEED0_8X8.split(), dtype=np.float64).reshape(8, 8)
    got = noise_cuda.randn(0, (8, 8), 132, 2048)
    assert np.abs(got - want).max() <= 5e-5


def test_cuda_seed42_bf16_first_values():
    got = noise.draw("torch-cuda", 42, 2170)
    assert got.dtype == np.float32 and got.shape == (1, 2170, 64)
    np.testing.assert_allclose(got.reshape(-1)[:4], [0.194336, 2.15625, -0.171875, 0.847656], rtol=0, atol=1e-6)
    # every value is a bfloat16 (low 16 bits zero)
    assert not (got.view(np.uint32) & 0xFFFF).any()


@pytest.mark.parametrize("name", sorted(WAVE_CAPS))
def test_grid_stride_switches_at_the_preset_cap(name):
    g = noise.gpu(name)
    cap = WAVE_CAPS[name]
    assert g.wave_frames * 64 == cap
    thread, call, comp = noise_cuda.element_source(cap, g.sms, g.threads_per_sm)
    assert (thread == np.arange(cap)).all() and not call.any() and not comp.any()
    thread, call, comp = noise_cuda.element_source(cap + 64, g.sms, g.threads_per_sm)
    assert (thread[:cap] == np.arange(cap)).all() and not comp[:cap].any()
    assert (thread[cap:] == np.arange(64)).all() and (comp[cap:] == 1).all() and not call.any()
    # 4·cap + 1 elements: the first element past four waves is the second call of thread 0.
    thread, call, comp = noise_cuda.element_source(4 * cap + 1, g.sms, g.threads_per_sm)
    assert (thread[-1], call[-1], comp[-1]) == (0, 1, 0)


def test_draw_is_gpu_independent_up_to_the_cap_only():
    h100, big = noise.gpu("h100"), noise.gpu("4096x2048")
    frames = h100.wave_frames  # 4224 frames, 169 s
    assert frames == 4224
    np.testing.assert_array_equal(noise.draw("torch-cuda", 81563, frames, h100),
                                  noise.draw("torch-cuda", 81563, frames, big))
    a = noise.draw("torch-cuda", 81563, frames + 1, h100)
    b = noise.draw("torch-cuda", 81563, frames + 1, big)
    np.testing.assert_array_equal(a[:, :frames], b[:, :frames])
    assert not np.array_equal(a[:, frames:], b[:, frames:])
    # Past the cap, element cap is thread 0's second component (y = s·cos of the same pair).
    first = noise_cuda.randn(81563, (1, frames + 1, 64), h100.sms, h100.threads_per_sm).reshape(-1)
    thread0 = noise_cuda.normal4(noise_cuda.philox4x32_10((0, 0, np.zeros(1, np.uint64), 0), (81563, 0)))[:, 0]
    assert first[0] == thread0[0] and first[frames * 64] == thread0[1]


def test_gpu_presets_and_custom_values():
    assert noise.gpu(None).name == "h100" and noise.gpu("H200").sms == 132
    assert noise.gpu("t4").dtype == "float16" and noise.gpu("a100").dtype == "bfloat16"
    assert (noise.gpu(84).sms, noise.gpu(84).threads_per_sm) == (84, 2048)
    assert (noise.gpu("84x1536").sms, noise.gpu("84x1536").threads_per_sm) == (84, 1536)
    for bad in ("v100x", "h1000", 0, "84x1000", True, 1.5):
        with pytest.raises(ValueError):
            noise.gpu(bad)


def test_t4_draws_float16():
    got = noise.draw("torch-cuda", 3, 200, noise.gpu("t4"))
    np.testing.assert_array_equal(got, got.astype(np.float16).astype(F32))
    raw = noise_cuda.randn(3, (1, 200, 64), 40, 1024)
    assert np.abs(got - raw).max() <= 2.0 ** -11 * np.abs(raw).max()


def test_numpy_source_is_todays_draw():
    np.testing.assert_array_equal(noise.draw("numpy", 81563, 300), sampler.initial_noise(81563, 300))


def test_sources_differ_and_are_deterministic():
    draws = {s: noise.draw(s, 7, 250) for s in noise.SOURCES}
    for s, x in draws.items():
        np.testing.assert_array_equal(x, noise.draw(s, 7, 250))
        assert x.dtype == np.float32 and abs(float(x.std()) - 1.0) < 0.05
    assert not np.array_equal(draws["torch-cuda"], draws["torch-cpu"])


def test_source_validation_and_description():
    assert noise.source().describe(5) == {"source": "torch-cuda", "seed": 5, "gpu": "h100", "dtype": "bfloat16"}
    assert noise.source("torch-cpu").describe(5) == {"source": "torch-cpu", "seed": 5, "dtype": "float32"}
    with pytest.raises(ValueError, match="torch-cuda only"):
        noise.source("numpy", "a100")
    with pytest.raises(ValueError, match="not a noise source"):
        noise.source("curand")
    for bad in (-1, 2**64, 1.0, True):
        with pytest.raises(ValueError):
            noise.draw("torch-cpu", bad, 10)


def _exact_fma_f32(a, b, c) -> np.float32:
    """Round the exact rational a·b + c to float32 by comparing against the two nearest float32."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = F32(float(exact))
    around = (np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf)))
    # nearest; on a tie the even significand (ties-to-even)
    return min(around, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.array(v).view(np.uint32)) & 1))


def test_fma_rounds_once():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(400).astype(F32)
    b = rng.standard_normal(400).astype(F32)
    c = rng.standard_normal(400).astype(F32)
    # Midpoint traps: a·b + c lands a hair off a float32 midpoint, where float64 rounding hits it.
    a[:4] = F32(1 + 2.0 ** -12)
    b[:4] = F32(1 + 2.0 ** -12)
    c[:4] = [F32(-(2.0 ** -24)), F32(2.0 ** -60), F32(-(2.0 ** -60)), F32(0)]
    got = fma(a, b, c)
    want = np.array([_exact_fma_f32(x, y, z) for x, y, z in zip(a, b, c)], dtype=F32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_mul_rz_truncates():
    a = np.array([1 + 2.0 ** -23, -(1 + 2.0 ** -23), 3.0], dtype=F32)
    b = np.array([1 + 2.0 ** -23, 1 + 2.0 ** -23, 1 / 3], dtype=F32)
    got = mul_rz(a, b).astype(np.float64)
    exact = a.astype(np.float64) * b.astype(np.float64)
    assert (np.abs(got) <= np.abs(exact)).all()
    assert (np.abs(exact - got) < np.abs(np.spacing(got.astype(F32)))).all()


@pytest.mark.parametrize("name", noise.SOURCES)
def test_600_second_draw_is_fast(name):
    noise.draw(name, 1, 250)  # warm imports
    start = time.process_time()
    x = noise.draw(name, 81563, 15000)
    cpu = time.process_time() - start
    assert x.shape == (1, 15000, 64)
    assert cpu < 1.0, f"{name}: {cpu:.2f} s of CPU time for a 600-s draw"
