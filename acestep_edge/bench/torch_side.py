"""`--torch`: time the PyTorch reference (models/reference.py) on the same weights, request, noise and threads.

Imported only when `--torch` is given; it needs the export extra (torch). Module hooks time each
network call, so the stages line up with the ONNX side without changing the reference.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .flops import dit_flops
from .onnx_side import REFERENCE_STEPS, bench_request, dit_summary, guided_steps
from .system import peak_rss_bytes, reset_peak_rss

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised without the export extra
    raise ImportError("`acestep-edge bench --torch` needs the [export] extra (torch): "
                      "pip install 'acestep-edge[export]'") from exc

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fastest_dtype(device: str) -> str:
    """bf16 on CUDA and on CPUs with native bf16 matmul (AVX-512-BF16 / AMX), else fp32."""
    if device == "cuda":
        return "bf16"
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = cpuinfo.read_text(errors="replace")
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


class _Timer:
    """Forward pre/post hooks that append each call's wall time (synchronising CUDA first)."""

    def __init__(self, module, device: str):
        self.device, self.calls, self._start = device, [], 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _pre(self, module, args):
        self._sync()
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self._sync()
        batch = int(args[0].shape[0]) if args else 1
        self.calls.append((batch, time.perf_counter() - self._start))


def checkpoint_for(bundle_manifest: dict, given: str | None) -> Path:
    """The checkpoint the bundle was exported from: --checkpoint, else the manifest's recorded folder."""
    if given:
        return Path(given)
    recorded = (bundle_manifest.get("export") or {}).get("checkpoint")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    raise FileNotFoundError(f"--torch needs the checkpoint this bundle was exported from; the manifest records "
                            f"{recorded!r}, which is not a folder here: pass --checkpoint DIR")


def torch_gemm_peak(dtype: str, device: str, size: int | None = None, repeats: int = 3) -> dict:
    # 1024³ on a CPU: a CPU without native bf16 runs bf16 matmuls an order of magnitude slower than fp32.
    size = size or (8192 if device == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(DTYPES[dtype])
    b = torch.randn(size, size, device=device).to(DTYPES[dtype])
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return {"engine": "torch", "dtype": dtype, "size": size, "seconds": best, "tflops": 2 * size**3 / best / 1e12}


def _params(request, shift: float):
    from acestep_edge.models.reference import ReferenceParams

    s = request.settings
    return ReferenceParams(caption=request.positive_prompt, duration=request.duration, lyrics=s.lyrics,
                           steps=request.steps, cfg_scale=request.cfg_scale, guidance=s.guidance_type,
                           cfg_interval=(s.cfg_interval_start, s.cfg_interval_end), shift=shift, bpm=s.bpm,
                           key_scale=s.key_scale, time_signature=s.time_signature, language=s.vocal_language)


def bench_torch(checkpoint: Path, manifest: dict, dtype: str, device: str, threads: int | None, durations,
                steps: int, repeats: int, log=print) -> list[dict]:
    from acestep_edge.models.reference import ReferencePipeline, finish_audio
    from acestep_edge.runtime import sampler
    from acestep_edge.runtime.defaults import resolve
    from acestep_edge.runtime.request import parse_request

    if threads:
        torch.set_num_threads(threads)
    reset_peak_rss()
    start = time.perf_counter()
    ref = ReferencePipeline.from_checkpoint(checkpoint, dtype=DTYPES[dtype], device=device)
    load_s = time.perf_counter() - start
    dit = _Timer(ref.acestep.decoder, device)
    text = _Timer(ref.text_encoder, device)
    cond = _Timer(ref.acestep.encoder, device)
    vae = _Timer(ref.vae.decoder if hasattr(ref.vae, "decoder") else ref.vae, device)
    cfg = ref.preset.dit
    shift = resolve(manifest.get("sampler_defaults")).shift
    peak = torch_gemm_peak(dtype, device)
    records = []
    for duration in durations:
        request = parse_request(bench_request(duration, steps))
        params = _params(request, shift)
        noise = torch.from_numpy(sampler.initial_noise(request.seed, request.latent_frames))
        reset_peak_rss()
        log(f"  torch {dtype} {device}: {duration:g} s, warm-up + {repeats} × {steps} steps")
        runs = []
        for _ in range(repeats + 1):
            for timer in (dit, text, cond, vae):
                timer.calls.clear()
            t0 = time.perf_counter()
            states, _ = ref.encode_prompts(params)
            latents = ref.sample(params, noise, states)
            raw = ref.decode(latents, params.vae_chunk, params.vae_overlap)
            finish_audio(raw, params.samples, params.normalize)
            runs.append({"e2e": time.perf_counter() - t0, "dit": list(dit.calls), "text": sum(s for _, s in text.calls),
                         "cond": sum(s for _, s in cond.calls), "vae": sum(s for _, s in vae.calls),
                         "chunks": len(vae.calls), "tokens": int(states.shape[1])})
        runs = runs[1:]
        calls = [c for r in runs for c in r["dit"]]
        frames = params.frames
        record = {
            "side": "torch", "checkpoint": str(checkpoint), "precision": dtype, "provider": f"torch-{device}",
            "threads": threads, "duration_s": duration, "steps": steps, "repeats": repeats, "frames": frames,
            "encoder_tokens": runs[0]["tokens"], "session_load_s": load_s,
            "text_encoder_s": statistics.median(r["text"] for r in runs),
            "condition_encoder_s": statistics.median(r["cond"] for r in runs),
            "vae_total_s": statistics.median(r["vae"] for r in runs), "vae_chunks": runs[0]["chunks"],
            "write_s": None, "end_to_end_s": statistics.median(r["e2e"] for r in runs),
            "attention": "torch SDPA",
        }
        record["vae_per_chunk_s"] = record["vae_total_s"] / max(1, record["vae_chunks"])
        guided50 = guided_steps(request, REFERENCE_STEPS, shift)
        # The reference projects the cross-attention K/V once per render, so they are not per-step work.
        record.update(dit_summary(calls, cfg, frames, record["encoder_tokens"], steps, guided50, cross_kv=False))
        record["dit_total_s"] /= len(runs)
        record["dit_gflop_per_step_batch2_graph_equivalent"] = dit_flops(cfg, 2, frames, record["encoder_tokens"])[
            "total"] / 1e9
        record["rtf"] = record["end_to_end_s"] / duration
        if "dit_total_50_steps_s_extrapolated" in record:
            record["end_to_end_50_steps_s_extrapolated"] = (record["end_to_end_s"] - record["dit_total_s"]
                                                            + record["dit_total_50_steps_s_extrapolated"])
        record["peak_host_memory_gb"] = peak_rss_bytes() / 1e9
        record["device_memory_gb"] = (torch.cuda.max_memory_allocated() / 1e9) if device == "cuda" else None
        record["gemm_peak_tflops"] = peak["tflops"]
        record["gemm_peak"] = peak
        record["dit_share_of_peak"] = (record["dit_tflops_achieved"] or 0) / peak["tflops"]
        record["torch"] = torch.__version__
        records.append(record)
    return records
