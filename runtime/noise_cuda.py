"""torch's CUDA generator in numpy: Philox4x32-10, curand_normal4 and torch's grid-stride launch mapping.

Follows cuRAND's `curand_philox4x32_x.h` / `curand_normal.h` and torch's
`native/cuda/DistributionTemplates.h` (`distribution_nullary_kernel`, block 256, unroll 4). The
mapping of values to elements is exact; the values agree with a GPU to float32 precision (the
GPU's sin.approx/cos.approx are modelled as correctly rounded sine and cosine), so after the cast
to bfloat16 a few values in ten thousand land one bf16 step away.
"""

from __future__ import annotations

import math

import numpy as np

from .fp32 import F32, fma, from_bits, mul_rz

BLOCK = 256
UNROLL = 4
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)

# libdevice logf: the float32 Horner coefficients, ln 2, and Box-Muller's scale constants.
_LOGF_COEFFS = [from_bits(b) for b in (0xBE055027, 0x3E1039F6, 0xBDF8CDCC, 0x3E0F2955, 0xBE2AD8B9,
                                       0x3E4CED0B, 0xBE7FFF22, 0x3EAAAA78, 0xBF000000)]
_LN2 = from_bits(0x3F317218)
_TWO_POW_M32, _TWO_POW_M33 = F32(2.0 ** -32), F32(2.0 ** -33)
_TWO_PI_M32, _PI_M32 = from_bits(0x30C90FDB), from_bits(0x30490FDB)
_INV_TWO_PI = from_bits(0x3E22F983)


def philox4x32_10(counter: tuple, key: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 on vectors: four uint32 counter words (arrays or ints) and a (lo, hi) key."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = ((p1 >> _SHIFT32) ^ c1 ^ np.uint64(k0), p1 & _MASK32,
                          (p0 >> _SHIFT32) ^ c3 ^ np.uint64(k1), p0 & _MASK32)
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def logf(a: np.ndarray) -> np.ndarray:
    """libdevice's inline float32 logf for normal positive a (every Box-Muller input is one)."""
    bits = a.view(np.int32)
    e = (bits - np.int32(0x3F2AAAAB)) & np.int32(-0x800000)  # 0xFF800000 as int32
    m = (bits - e).view(F32)
    f = m - F32(1)
    p = np.full_like(f, _LOGF_COEFFS[0])
    for c in _LOGF_COEFFS[1:]:
        p = fma(p, f, c)
    q = p * f
    r = fma(q, f, f)
    return fma(e.astype(F32) * F32(2.0 ** -23), _LN2, r)


def _sincos_approx(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin.approx/cos.approx: a multiply by 1/(2π) rounded toward zero, then the GPU's special-function
    unit, modelled as the correctly rounded sine/cosine of 2π times that product."""
    turns = mul_rz(v, _INV_TWO_PI).astype(np.float64) * (2.0 * math.pi)
    return np.sin(turns).astype(F32), np.cos(turns).astype(F32)


def normal4(words: tuple[np.ndarray, ...]) -> np.ndarray:
    """curand_normal4 of one Philox output: [4, n] float32 in component order x, y, z, w."""
    out = []
    for a, b in ((words[0], words[1]), (words[2], words[3])):
        u = fma(a.astype(F32), _TWO_POW_M32, _TWO_POW_M33)
        v = fma(b.astype(F32), _TWO_PI_M32, _PI_M32)
        s = np.sqrt(F32(-2) * logf(u))
        sin, cos = _sincos_approx(v)
        out += [s * sin, s * cos]
    return np.stack(out)


def stride(numel: int, sms: int, threads_per_sm: int) -> int:
    """Threads in torch's launch (S): grid = min(ceil(n/256), SMs·(threads per SM // 256)) blocks of 256."""
    blocks = min(-(-numel // BLOCK), sms * (threads_per_sm // BLOCK))
    return BLOCK * max(blocks, 1)


def element_source(numel: int, sms: int, threads_per_sm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thread, curand_normal4 call, component) that writes each element of a fresh draw."""
    s = stride(numel, sms, threads_per_sm)
    e = np.arange(numel, dtype=np.int64)
    rounds = e // s
    return e % s, rounds // UNROLL, rounds % UNROLL


def randn(seed: int, shape: tuple[int, ...], sms: int, threads_per_sm: int) -> np.ndarray:
    """float32 `torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed))` before any cast."""
    n = int(np.prod(shape))
    s = stride(n, sms, threads_per_sm)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    key = (seed & 0xFFFFFFFF, seed >> 32)
    rounds = -(-n // s)  # values per thread, in components of successive calls
    calls = -(-rounds // UNROLL)
    threads = np.arange(s, dtype=np.uint64)
    values = np.empty((calls, UNROLL, s), dtype=F32)
    for call in range(calls):
        # A fresh generator has offset 0: thread idx's counter is (call, 0, idx_lo, idx_hi).
        words = philox4x32_10((call, 0, threads & _MASK32, threads >> _SHIFT32), key)
        values[call] = normal4(words)
    # Element e = idx + S·(4·call + component): the grid-stride loop of distribution_nullary_kernel.
    return values.reshape(-1)[:n].reshape(shape)
