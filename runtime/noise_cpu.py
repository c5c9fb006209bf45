"""torch's CPU generator in numpy: mt19937 uniforms and the x86 AVX2 Box-Muller kernel, float32 bit for bit.

Follows torch's ATen sources: `MT19937RNGEngine.h` (seeding), `TransformationHelper.h` (24-bit
uniforms), `native/cpu/DistributionTemplates.h` (`normal_fill`, `NormalFill16`) and
`native/cpu/avx_mathfun.h` (`log256_ps`, `sincos256_ps`, the Cephes float32 polynomials). The
compiler fuses some multiply-adds of those polynomials into FMA instructions; `fp32.fma` rounds
them once, exactly where the x86 build does (the pattern was found by testing against torch).
"""

from __future__ import annotations

import math

import numpy as np

from .fp32 import F32, fma

# avx_mathfun.h constants (decimal literals rounded to float32 as the C compiler does).
_SQRTHF = F32(0.707106781186547524)
_LOG_P = [F32(v) for v in (7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1,
                           1.4249322787E-1, -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1,
                           3.3333331174E-1)]
_LOG_Q1, _LOG_Q2 = F32(-2.12194440e-4), F32(0.693359375)
_DP = [F32(-0.78515625), F32(-2.4187564849853515625e-4), F32(-3.77489497744594108e-8)]
_SINCOF = [F32(-1.9515295891E-4), F32(8.3321608736E-3), F32(-1.6666654611E-1)]
_COSCOF = [F32(2.443315711809948E-005), F32(-1.388731625493765E-003), F32(4.166664568298827E-002)]
_FOPI = F32(1.27323954473516)
_TWO_PI = F32(2.0 * math.pi)  # `2.0f * c10::pi<double>` evaluates in double, then narrows
_MIN_NORM = np.uint32(0x00800000).view(F32)
_ONE, _HALF = F32(1.0), F32(0.5)


def mt19937_words(seed: int, count: int) -> np.ndarray:
    """`count` 32-bit outputs of torch's CPU generator after `manual_seed(seed)` (uint32)."""
    s = int(seed) & 0xFFFFFFFF  # torch seeds mt19937 with the low 32 bits (a negative seed as uint64)
    key = np.empty(624, dtype=np.uint32)
    key[0] = s
    for i in range(1, 624):  # init_genrand
        s = (1812433253 * (s ^ (s >> 30)) + i) & 0xFFFFFFFF
        key[i] = s
    bitgen = np.random.MT19937()
    bitgen.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 624}}
    return bitgen.random_raw(count).astype(np.uint32)


def log_avx2(x: np.ndarray) -> np.ndarray:
    """log256_ps for x in (0, 1], with the x86 build's fused multiply-adds."""
    x = np.maximum(x.astype(F32), _MIN_NORM)
    bits = x.view(np.uint32)
    e = ((bits >> np.uint32(23)).astype(np.int32) - 0x7F).astype(F32) + _ONE
    x = ((bits & np.uint32(~0x7F800000 & 0xFFFFFFFF)) | np.uint32(0x3F000000)).view(F32)
    small = x < _SQRTHF
    tmp = np.where(small, x, F32(0))
    x = x - _ONE
    e = e - np.where(small, _ONE, F32(0))
    x = x + tmp
    z = x * x
    y = np.full_like(x, _LOG_P[0])
    for p in _LOG_P[1:]:
        y = fma(y, x, p)
    y = y * x
    y = fma(y, z, e * _LOG_Q1)
    y = y - z * _HALF
    x = x + y
    return x + e * _LOG_Q2


def sincos_avx2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sincos256_ps for x ≥ 0 (the Box-Muller angle), with the x86 build's fused multiply-adds."""
    x = np.abs(x.astype(F32))
    j = (x * _FOPI).astype(np.int32)  # cvttps: truncation
    j = (j + 1) & ~1
    y = j.astype(F32)
    for dp in _DP:
        x = fma(y, dp, x)
    sin_sign = ((j & 4) << 29).astype(np.uint32)
    cos_sign = ((~(j - 2) & 4) << 29).astype(np.uint32)
    poly = (j & 2) == 0
    z = x * x
    yc = fma(fma(np.full_like(z, _COSCOF[0]), z, _COSCOF[1]), z, _COSCOF[2])
    yc = yc * z
    yc = fma(yc, z, -(z * _HALF))
    yc = yc + _ONE
    ys = fma(fma(np.full_like(z, _SINCOF[0]), z, _SINCOF[1]), z, _SINCOF[2])
    ys = ys * z
    ys = fma(ys, x, x)
    sin = np.where(poly, ys, yc)
    cos = np.where(poly, yc, ys)
    sin = (sin.view(np.uint32) ^ sin_sign).view(F32)
    cos = (cos.view(np.uint32) ^ cos_sign).view(F32)
    return sin, cos


def _box_muller16(u: np.ndarray) -> np.ndarray:
    """NormalFill16 on rows of 16 uniforms: [n, 16] → [n, 16] standard normals."""
    u1 = _ONE - u[:, :8]
    radius = np.sqrt(F32(-2.0) * log_avx2(u1))
    sin, cos = sincos_avx2(_TWO_PI * u[:, 8:])
    # fmadd(n, std=1, mean=0): the + 0 turns −0 into +0.
    return np.concatenate([radius * cos + F32(0), radius * sin + F32(0)], axis=1)


def randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` on x86."""
    n = int(np.prod(shape))
    if n < 16:
        raise ValueError(f"torch-cpu noise needs at least 16 values (torch draws fewer another way), got {n}")
    extra = 16 if n % 16 else 0
    words = mt19937_words(seed, n + extra)
    u = ((words & np.uint32(0xFFFFFF)).astype(F32) * F32(2.0 ** -24))
    full = n // 16 * 16
    out = np.empty(n, dtype=F32)
    out[:full] = _box_muller16(u[:full].reshape(-1, 16)).reshape(-1)
    if extra:
        # torch recomputes the last 16 outputs from 16 fresh uniforms.
        out[n - 16:] = _box_muller16(u[n:].reshape(1, 16)).reshape(-1)
    return out.reshape(shape)
