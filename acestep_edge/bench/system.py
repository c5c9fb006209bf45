"""What the numbers were measured on: versions, CPU and GPU, and peak host/device memory."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def _cpu() -> dict:
    info = {"model": platform.processor() or platform.machine(), "logical_cores": os.cpu_count()}
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                                "amx_tile", "amx_int8", "fma"})
                break
    return info


def gpus() -> list[dict]:
    """The GPUs nvidia-smi sees (empty without one)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "memory_mib": int(float(parts[1])), "driver": parts[2]})
    return rows


def system_info(provider: str, threads: int | None) -> dict:
    import numpy
    import onnxruntime

    from acestep_edge import __version__

    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "acestep_edge": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__, "ort_providers": onnxruntime.get_available_providers(),
        "torch": sys.modules["torch"].__version__ if "torch" in sys.modules else None,
        "provider": provider, "threads": threads, "os": platform.platform(), "cpu": _cpu(),
        "memory_gb": round(mem / 1e9, 1) if mem else None, "gpus": gpus(),
    }


def info_line(info: dict) -> str:
    cpu = info["cpu"]
    gpu = "; ".join(f"{g['name']} {g['memory_mib']} MiB" for g in info["gpus"]) or "no GPU"
    torch = f", torch {info['torch']}" if info.get("torch") else ""
    return (f"acestep-edge {info['acestep_edge']}, Python {info['python']}, numpy {info['numpy']}, onnxruntime "
            f"{info['onnxruntime']}{torch}; provider {info['provider']}, threads {info['threads'] or 'default'}; "
            f"CPU {cpu['model']} ({cpu.get('usable_cores', cpu['logical_cores'])} usable cores, "
            f"{' '.join(cpu.get('flags', []))}); {info['memory_gb']} GB RAM; {gpu}")


# -- memory -------------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(key: str) -> int | None:
    """A kB field of /proc/self/status (Linux) in bytes; None where there is none."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def rss_bytes() -> int | None:
    """Resident set size now (VmRSS); None where /proc is missing."""
    return _proc_status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident set size since the last reset (VmHWM), or since start (getrusage) elsewhere."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def device_memory_bytes() -> int | None:
    """GPU memory this process holds now (nvidia-smi), None without a GPU.

    ONNX Runtime's CUDA arena never returns memory during a session, so after a render this is the
    session's peak arena size (plus the CUDA context).
    """
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    total = 0
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()):
            total += int(float(parts[1])) * 1024 * 1024
    return total
