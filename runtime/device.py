"""Execution-provider plumbing: the option dicts for CUDA and TensorRT, and what a session actually got.

ONNX Runtime silently falls back to the CPU when a provider cannot load (missing CUDA/cuDNN/TensorRT
libraries, a CPU-only wheel); `provider_report` turns that into a warning the caller can show.
Option names follow onnxruntime's CUDA and TensorRT execution-provider documentation
(onnxruntime.ai/docs/execution-providers/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .vocab import CAPTION_MAX_TOKENS, LATENT_RATE, LYRIC_MAX_TOKENS, MAX_SECONDS, MIN_FRAMES, MIN_SECONDS

ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
TRT_CACHE_DIR = "trt_cache"  # beside the bundle's graphs: engines and the timing cache survive restarts

# TensorRT optimisation profiles for the DiT: one per duration bucket (seconds), so each engine is tuned
# for the lengths it serves instead of one range from 10 s to 600 s. 25 latent frames per second.
DURATION_BUCKETS = ((MIN_SECONDS, 60.0), (60.0, 180.0), (180.0, MAX_SECONDS))
# Caption tokens + the timbre token + lyric tokens.
MAX_ENCODER_TOKENS = CAPTION_MAX_TOKENS + 1 + LYRIC_MAX_TOKENS


@dataclass(frozen=True)
class DeviceOptions:
    """GPU knobs beyond the provider name. Defaults are the safe ones; see `docs` in the README section."""

    device_id: int = 0
    io_binding: bool | None = None  # None: on for cuda/tensorrt (keeps the constant inputs on the device)
    cuda_graph: bool = False  # CUDA graphs for the DiT: fixed shapes per render and bound buffers (opt-in)
    trt_fp16: bool = True  # TensorRT builds fp16 engines (fp32 I/O stays as the bundle declares)
    trt_cache_dir: str | None = None  # default: <bundle>/trt_cache


def cuda_options(device: DeviceOptions, cuda_graph: bool = False) -> dict:
    """CUDAExecutionProvider options. `cuda_graph` only for a graph whose every call is bound (the DiT)."""
    options = {
        "device_id": str(device.device_id),
        # Grow the arena by what is asked, not by powers of two: a 600 s render's attention buffers are
        # large and doubling overshoots the card.
        "arena_extend_strategy": "kSameAsRequested",
        # Exhaustive cuDNN search costs minutes for the VAE's many conv shapes; heuristic is near as fast.
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
    }
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def _shape(name: str, dims) -> str:
    return f"{name}:" + "x".join(str(int(d)) for d in dims)


def dit_profiles(encoder_dim: int, buckets=DURATION_BUCKETS, batch=(1, 2)) -> dict[str, str]:
    """trt_profile_{min,opt,max}_shapes strings for the DiT inputs, one profile per duration bucket.

    Several profiles are given by repeating each input name (onnxruntime's TensorRT EP syntax).
    """
    mins, opts, maxs = [], [], []
    for low, high in buckets:
        t_lo = max(MIN_FRAMES, int(low * LATENT_RATE))
        t_hi = int(high * LATENT_RATE)
        t_opt = (t_lo + t_hi) // 2
        for dims, out in ((dict(b=batch[0], t=t_lo, s=1), mins), (dict(b=batch[1], t=t_opt, s=512), opts),
                          (dict(b=batch[1], t=t_hi, s=MAX_ENCODER_TOKENS), maxs)):
            b, t, s = dims["b"], dims["t"], dims["s"]
            out += [_shape("x", (b, t, 64)), _shape("t", (b,)), _shape("encoder_states", (b, s, encoder_dim)),
                    _shape("src_latents", (b, t, 64)), _shape("chunk_mask", (b, t))]
    return {"trt_profile_min_shapes": ",".join(mins), "trt_profile_opt_shapes": ",".join(opts),
            "trt_profile_max_shapes": ",".join(maxs)}


def tensorrt_options(device: DeviceOptions, bundle_dir: str | Path, graph: str | None = None,
                     encoder_dim: int | None = None) -> dict:
    """TensorrtExecutionProvider options: fp16, engine and timing caches beside the bundle, DiT profiles."""
    cache = Path(device.trt_cache_dir) if device.trt_cache_dir else Path(bundle_dir) / TRT_CACHE_DIR
    options = {
        "device_id": str(device.device_id),
        "trt_fp16_enable": "1" if device.trt_fp16 else "0",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache),
        # Engines are keyed by graph and profile; a prefix keeps the graphs apart in the shared folder.
        "trt_engine_cache_prefix": graph or "graph",
    }
    if graph == "dit" and encoder_dim:
        options.update(dit_profiles(encoder_dim))
    return options


def provider_entries(provider: str, device: DeviceOptions, bundle_dir: str | Path, graph: str | None,
                     extra: dict | None = None, encoder_dim: int | None = None) -> list:
    """The ordered provider list for one graph: the asked one first, then the fall-backs ORT may use.

    `extra` (the user's provider_options) overrides the built options of the asked provider.
    """
    extra = dict(extra or {})
    chain: list = []
    if provider == "tensorrt":
        trt = {**tensorrt_options(device, bundle_dir, graph, encoder_dim), **extra}
        chain += [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda_options(device))]
    elif provider == "cuda":
        graphs = device.cuda_graph and graph == "dit"
        chain.append(("CUDAExecutionProvider", {**cuda_options(device, cuda_graph=graphs), **extra}))
    chain.append("CPUExecutionProvider")
    return chain


def provider_report(provider: str, graph: str, got: list[str]) -> str | None:
    """A warning when the session did not get the asked provider first (ORT fell back), else None."""
    want = ORT_NAMES[provider]
    if got and got[0] == want:
        return None
    import onnxruntime as ort

    available = ", ".join(ort.get_available_providers())
    hint = {
        "cuda": "install onnxruntime-gpu (and not onnxruntime) with the CUDA and cuDNN 9 libraries it was built for on the library path",
        "tensorrt": "install TensorRT 10 libraries beside onnxruntime-gpu",
    }.get(provider, "")
    return (f"graph {graph!r}: asked for {want} but ONNX Runtime runs it on {', '.join(got) or 'nothing'} "
            f"(available here: {available}); {hint}").rstrip("; ")


def session_device(got: list[str]) -> str:
    """Where a session's inputs live best: 'cuda' when its first provider is a GPU one, else 'cpu'."""
    return "cuda" if got and got[0] in DEVICE_PROVIDERS else "cpu"
