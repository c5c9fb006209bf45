"""Exact float32 arithmetic in numpy: a correctly rounded fused multiply-add, round-toward-zero products, bf16/fp16 rounding."""

from __future__ import annotations

import numpy as np

F32 = np.float32
_MID = np.uint64(1 << 28)  # a float64 whose low 29 mantissa bits are 100…0 sits halfway between two float32
_LOW29 = np.uint64((1 << 29) - 1)


def f32(value: float | int) -> np.float32:
    return np.float32(value)


def from_bits(bits: int) -> np.float32:
    """The float32 with these IEEE-754 bits (how vendor libraries write their constants)."""
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def fma(a, b, c) -> np.ndarray:
    """float32 a·b + c rounded once, as the hardware FMA instruction does.

    The product of two float32 is exact in float64; the float64 sum rounds once more, which can only
    go wrong for float32 when it lands exactly on a float32 midpoint. There the exact TwoSum error
    says which way the true sum lies, and one float64 step that way makes the final rounding right.
    """
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c = np.asarray(c, np.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    s = np.asarray(s)
    mid = ((s.view(np.uint64) & _LOW29) == _MID) & (err != 0)
    if mid.any():
        s = s.copy()
        toward = np.where(np.broadcast_to(err, s.shape) > 0, np.inf, -np.inf)
        s[mid] = np.nextafter(s[mid], toward[mid])
    return s.astype(F32)


def mul_rz(a, b) -> np.ndarray:
    """float32 a·b rounded toward zero (the exact product is a float64)."""
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    r = p.astype(F32)
    over = np.abs(r.astype(np.float64)) > np.abs(p)
    return np.where(over, np.nextafter(r, F32(0)), r).astype(F32)


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 (round to nearest even), returned as the float32 it widens back to."""
    bits = np.ascontiguousarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return rounded.astype(np.uint32).view(F32)


def to_float16(x: np.ndarray) -> np.ndarray:
    """float32 → float16 (round to nearest even), widened back to float32."""
    return np.asarray(x, F32).astype(np.float16).astype(F32)
