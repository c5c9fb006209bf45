"""The CPU's integer-GEMM features, and the int8 weight form (s8 or u8 with zero point 128) that is fast on it.

ONNX Runtime's CPU integer GEMM (MLAS QGEMM, used by `DynamicQuantizeMatMul`) multiplies uint8
activations by the weights. With VNNI (`vpdpbusd`: u8 × s8 summed straight into 32 bits) or AMX,
signed weights are the fast kernel. Without VNNI the AVX2 u8 × s8 kernel (`vpmaddubsw`) adds byte
pairs into 16 bits and can saturate, so there uint8 weights with zero point 128 (the u8 × u8 kernel,
exact) are the right form. The two forms hold the same values (s8 = u8 − 128), so the runtime picks
one when it creates a session (runtime/int8_form.py); `ACESTEP_EDGE_INT8_WEIGHTS` forces one.
"""

from __future__ import annotations

import os
import platform

FORMS = ("s8", "u8")
OVERRIDE_ENV = "ACESTEP_EDGE_INT8_WEIGHTS"  # s8 | u8 | stored (keep the bundle's form) | auto
# Flags (Linux /proc/cpuinfo names) whose integer dot products take signed weights without saturating.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first processor's flags from /proc/cpuinfo; None where that file is absent (not Linux)."""
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return frozenset()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_summary(flags: frozenset[str] | None = None) -> str:
    """`model; present flags; absent: …` for benchmark headers and `inspect`."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return f"{cpu_model()}; flags unknown (no /proc/cpuinfo)"
    have = [f for f in SHOWN_FLAGS if f in flags]
    return f"{cpu_model()}; {' '.join(have)}; absent: {' '.join(f for f in SHOWN_FLAGS if f not in flags)}"


def int8_weight_form(stored: str, flags: frozenset[str] | None = None,
                     override: str | None = None) -> tuple[str, str]:
    """(form to run, why) for a graph whose int8 weights are stored as `stored` ("s8" or "u8").

    `override` (default: the ACESTEP_EDGE_INT8_WEIGHTS variable) is s8, u8, stored or auto.
    """
    override = (os.environ.get(OVERRIDE_ENV, "") if override is None else override).strip().lower()
    if override in FORMS:
        return override, f"forced by {OVERRIDE_ENV}={override}"
    if override == "stored":
        return stored, f"the bundle's stored form ({OVERRIDE_ENV}=stored)"
    if override not in ("", "auto"):
        raise ValueError(f"{OVERRIDE_ENV} must be s8, u8, stored or auto (got {override!r})")
    if flags is None:
        flags = cpu_flags()
    machine = platform.machine().lower()
    if flags is None or machine not in ("x86_64", "amd64", "i386", "i686", ""):
        # ARM (NEON/SVE dot products take both forms) or CPU flags unreadable: nothing to gain from a rewrite.
        return stored, "the bundle's stored form (CPU flags not readable here or not an x86 CPU)"
    vnni = [f for f in VNNI_FLAGS if f in flags]
    if vnni:
        return "s8", f"{'/'.join(vnni)}: u8 x s8 dot products into 32 bits (the fast exact kernel)"
    return "u8", "no VNNI/AMX: the AVX2 u8 x s8 kernel can saturate 16-bit pair sums; u8 weights with zero point 128"
