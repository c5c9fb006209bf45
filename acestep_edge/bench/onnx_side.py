"""Time the ONNX runtime `Pipeline` stage by stage: session load, encoders, DiT steps, VAE decode, write."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .flops import dit_flops, step_flops
from .system import device_memory_bytes, peak_rss_bytes, reset_peak_rss

GRAPHS = ("text_encoder", "condition_encoder", "dit", "vae_decoder")
REFERENCE_STEPS = 50  # what a production render uses; fewer measured steps are extrapolated to it


def base_request() -> dict:
    """The shipped example request (the 180 s cantata: lyrics, metas, APG with CFG interval [0, 0.85])."""
    import acestep_edge

    return json.loads((Path(acestep_edge.__file__).resolve().parent / "demo_request.json").read_text())


def bench_request(duration: float, steps: int, seed: int = 1234) -> dict:
    request = base_request()
    request.update({"duration": duration, "steps": steps, "seed": seed, "outputFormat": "WAV", "numberResults": 1})
    return request


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def guided_steps(request, steps: int, shift: float) -> int:
    """How many of `steps` steps run the batch-2 (CFG) DiT for this request's interval and scale."""
    from acestep_edge.runtime import sampler

    settings = request.settings
    if request.cfg_scale <= 1.0:
        return 0
    schedule = sampler.timesteps(steps, shift)
    return sum(sampler.in_cfg_interval(float(t), settings.cfg_interval_start, settings.cfg_interval_end)
               for t in schedule[:-1])


def dit_summary(calls: list[tuple[int, float]], cfg: dict, frames: int, tokens: int, steps: int, guided50: int,
                cross_kv: bool = True) -> dict:
    """ms per step (median, p90), totals, the 50-step extrapolation and achieved TFLOP/s of a list of calls."""
    seconds = [s for _, s in calls]
    by_batch = {b: [s for bb, s in calls if bb == b] for b in (1, 2)}
    out = {
        "dit_steps": len(calls), "dit_guided_steps": len(by_batch[2]),
        "dit_ms_per_step_median": 1e3 * statistics.median(seconds),
        "dit_ms_per_step_p90": 1e3 * percentile(seconds, 90),
        "dit_total_s": sum(seconds),
        "dit_ms_batch2_median": 1e3 * statistics.median(by_batch[2]) if by_batch[2] else None,
        "dit_ms_batch1_median": 1e3 * statistics.median(by_batch[1]) if by_batch[1] else None,
    }
    flops = step_flops(cfg, calls, frames, tokens, cross_kv)
    out["dit_gflop_per_step_batch2"] = dit_flops(cfg, 2, frames, tokens, cross_kv)["total"] / 1e9
    out["dit_tflops_achieved"] = flops / sum(seconds) / 1e12 if seconds else None
    if steps != REFERENCE_STEPS:
        # Extrapolation, labelled as such: median batch-2 and batch-1 call times × the 50-step mix.
        b2 = out["dit_ms_batch2_median"]
        b1 = out["dit_ms_batch1_median"]
        if b1 is None and b2 is not None:
            b1 = b2 * dit_flops(cfg, 1, frames, tokens, cross_kv)["total"] / dit_flops(cfg, 2, frames, tokens,
                                                                                         cross_kv)["total"]
        if b2 is None and b1 is not None:
            b2 = 2 * b1
        out["dit_total_50_steps_s_extrapolated"] = (guided50 * b2 + (REFERENCE_STEPS - guided50) * b1) / 1e3
    return out


def _render_once(pipeline, request, noise, out_dir: Path) -> dict:
    from acestep_edge.runtime.audio_io import write_audio
    from acestep_edge.runtime.postprocess import tile_windows

    start = time.perf_counter()
    cond = pipeline.condition(request)
    render = pipeline.start(request, noise=noise, conditioning=cond)
    result = render.result()
    write_start = time.perf_counter()
    write_audio(out_dir / "bench.wav", result.audio, result.sample_rate, "WAV")
    end = time.perf_counter()
    timings = result.metadata["timings"]
    chunks = len(tile_windows(cond.frames, pipeline.defaults.vae_chunk, pipeline.defaults.vae_overlap))
    return {"text_encoder_s": timings["text_encoder"], "condition_encoder_s": timings["condition_encoder"],
            "calls": list(render.dit.calls), "vae_total_s": timings["vae_decoder"], "vae_chunks": chunks,
            "write_s": end - write_start, "end_to_end_s": end - start, "frames": cond.frames,
            "encoder_tokens": int(cond.encoder_states.shape[1]), "providers": result.metadata["providers"],
            "warnings": [w for w in result.metadata["warnings"] if "ExecutionProvider" in w or "--ops" in w]}


def median_of(runs: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def bench_onnx(bundle: str | Path, provider: str, threads: int | None, durations, steps: int, repeats: int,
               device=None, peak: dict | None = None, log=print) -> list[dict]:
    """One JSON-able record per duration for this bundle and provider (warm-up render, then `repeats`)."""
    from acestep_edge.runtime import sampler
    from acestep_edge.runtime.pipeline import Pipeline
    from acestep_edge.runtime.request import parse_request

    reset_peak_rss()
    start = time.perf_counter()
    pipeline = Pipeline.load(bundle, provider=provider, threads=threads, device=device)
    load = {}
    for name in GRAPHS:
        t0 = time.perf_counter()
        pipeline.bundle.session(name)
        load[name] = time.perf_counter() - t0
    load_total = time.perf_counter() - start
    manifest = pipeline.bundle.manifest
    cfg = manifest["model"]["dit"]
    precision = manifest["graphs"]["dit"].get("precision", "fp32")
    shift = pipeline.defaults.shift
    records = []
    with tempfile.TemporaryDirectory(prefix="acestep-bench-") as tmp:
        for duration in durations:
            request = parse_request(bench_request(duration, steps))
            noise = sampler.initial_noise(request.seed, request.latent_frames)
            reset_peak_rss()
            log(f"  onnx {precision} {provider}: {duration:g} s, warm-up + {repeats} × {steps} steps")
            runs = [_render_once(pipeline, request, noise, Path(tmp)) for _ in range(repeats + 1)][1:]
            calls = [c for r in runs for c in r["calls"]]
            first = runs[0]
            record = {
                "side": "onnx", "bundle": str(bundle), "variant": manifest["model"].get("variant"),
                "precision": precision, "ops": manifest["graphs"]["dit"].get("ops"), "provider": provider,
                "providers_got": first["providers"], "threads": threads, "duration_s": duration, "steps": steps,
                "repeats": repeats, "frames": first["frames"], "encoder_tokens": first["encoder_tokens"],
                "session_load_s": load_total, "session_load_by_graph_s": load,
                "int8_weights": pipeline.bundle.weight_forms.get("dit", {}).get("used"),  # s8/u8 chosen for this CPU
                "text_encoder_s": median_of(runs, "text_encoder_s"),
                "condition_encoder_s": median_of(runs, "condition_encoder_s"),
                "vae_total_s": median_of(runs, "vae_total_s"), "vae_chunks": first["vae_chunks"],
                "write_s": median_of(runs, "write_s"), "end_to_end_s": median_of(runs, "end_to_end_s"),
            }
            record["vae_per_chunk_s"] = record["vae_total_s"] / record["vae_chunks"]
            guided50 = guided_steps(request, REFERENCE_STEPS, shift)
            record.update(dit_summary(calls, cfg, record["frames"], record["encoder_tokens"], steps, guided50))
            record["dit_total_s"] /= len(runs)
            record["rtf"] = record["end_to_end_s"] / duration
            if "dit_total_50_steps_s_extrapolated" in record:
                record["end_to_end_50_steps_s_extrapolated"] = (record["end_to_end_s"] - record["dit_total_s"]
                                                                + record["dit_total_50_steps_s_extrapolated"])
            record["peak_host_memory_gb"] = peak_rss_bytes() / 1e9
            dev = device_memory_bytes() if provider != "cpu" else None
            record["device_memory_gb"] = dev / 1e9 if dev is not None else None
            if peak:
                record["gemm_peak_tflops"] = peak["tflops"]
                record["dit_share_of_peak"] = (record["dit_tflops_achieved"] or 0) / peak["tflops"]
            record["warnings"] = sorted({w for r in runs for w in r["warnings"]})
            records.append(record)
    return records
