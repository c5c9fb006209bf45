"""VAE decode on CPU: ONNX Runtime variants beside PyTorch fp32/bf16, per second of audio, one process per mode.

    PYTHONPATH=$PWD python benchmarks/vae_decode_cpu.py --work /work/scratch/vaebench [--frames 512]
        [--threads 2] [--repeats 3] [--modes torch_fp32 torch_bf16 ort_fp32_plain ort_fp32 ort_fp16 ...]
        [--json out.json]

The model: the real-architecture Oobleck decoder of the XL preset (diffusers' AutoencoderOobleck config,
168.7 M parameters with the encoder), random weights drawn exactly as the random XL checkpoint draws
them (models/random_checkpoint.py `random_tensor`, seed 0, rounded through bf16 as that checkpoint
stores them). Input: seeded standard-normal latents [1, 64, frames] (512 frames = 20.48 s of audio),
decoded in one call (one window of the runtime's tiling).

Modes, each in a fresh process (`--threads` threads: torch.set_num_threads / intra_op_num_threads,
graph optimisation level ALL as the runtime sets it): one warm-up decode, then `--repeats` timed;
reported: median wall and CPU (user+sys) seconds per second of audio, the process's peak RSS (VmHWM),
and the multi-resolution STFT log-magnitude distance (export/parity.py) of its audio to torch fp32's.
- torch_fp32, torch_bf16: the PyTorch decoder (models/vae.py) in fp32 / bf16 weights and activations.
- ort_fp32_plain: the graph as exported before export/vae_layout.py (Conv1d, weight norm in-graph).
- ort_fp32: the bundle's fp32 vae_decoder (export/bundle.py: folded weight norm, Conv2d / NCHWc).
- ort_fp16: the bundle's fp16 vae_decoder (export/fp16.py on top of ort_fp32's graph).
- ort_fp32_runtime: ort_fp32's graph decoded as the runtime does on CPU (runtime/render.py): the session
  options of runtime/bundle.py for the vae_decoder (arena growing by request, no memory pattern) and
  `tiled_decode` with the exact overlap and two windows at once (SessionOptions.vae_workers), each
  session run on threads // 2 threads; the clip is then two windows of 256 frames plus context.
- ort_int8_static: exploratory, not shipped: ONNX Runtime's quantize_static (QLinearConv, s8 per-channel
  weights, u8 activations calibrated on two other random latent clips) on the ort_fp32 graph.
The summary also gives the runtime's cost per second of a 600 s render, from each mode's measured
per-frame cost and the frames its tiled decode runs (512-frame windows; the official 64-frame overlap
against the exporter's exact overlap, runtime/postprocess.py `exact_tile_overlap`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEED = 0
MODES = ("torch_fp32", "torch_bf16", "ort_fp32_plain", "ort_fp32", "ort_fp32_runtime", "ort_fp16", "ort_int8_static")
WORKERS = 2  # ort_fp32_runtime: windows at once (the runtime's default on CPU)
LATENT_RATE = 25.0
SONG_FRAMES = 15000  # 600 s


def xl_vae():
    """The XL preset's VAE with the random XL checkpoint's values (bf16-rounded, as stored there)."""
    import torch
    from acestep_edge.models.config import xl_base
    from acestep_edge.models.random_checkpoint import random_tensor
    from acestep_edge.models.vae import OobleckVae

    vae = OobleckVae(xl_base().vae)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(random_tensor("vae." + name, tuple(p.shape), SEED).to(torch.bfloat16).float())
    return vae.eval()


def latents(frames: int, seed: int = SEED):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((1, 64, frames), dtype=np.float32)


# -- graphs ---------------------------------------------------------------------------------------------


def _save(model, path: Path) -> Path:
    import onnx_ir as ir

    ir.save(model, path, external_data=path.name + ".data", size_threshold_bytes=1024)
    return path


def prepare(work: Path) -> None:
    """Export every ONNX variant into `work` (skipping those already there)."""
    from acestep_edge.export.graphs import VaeDecoderGraph, graph_specs
    from acestep_edge.export.onnx_export import export_program
    from acestep_edge.export.precision import apply_precision
    from acestep_edge.export.vae_layout import conv1d_as_conv2d, fold_weight_norm
    from acestep_edge.models.config import xl_base

    work.mkdir(parents=True, exist_ok=True)
    todo = [m for m in ("ort_fp32_plain", "ort_fp32", "ort_fp16") if not (work / f"{m}.onnx").exists()]
    if todo:
        preset, vae = xl_base(), xl_vae()
        spec = graph_specs(preset)["vae_decoder"]
        for mode in todo:
            model = export_program(spec, VaeDecoderGraph(vae), preset, "standard").model
            if mode != "ort_fp32_plain":  # what export/bundle.py does to the vae_decoder graph
                fold_weight_norm(model)
                conv1d_as_conv2d(model)
            if mode == "ort_fp16":
                apply_precision("vae_decoder", "fp16", model)
            _save(model, work / f"{mode}.onnx")
    if not (work / "ort_int8_static.onnx").exists():
        _static_int8(work / "ort_fp32.onnx", work / "ort_int8_static.onnx")


def _static_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"latents": latents(64, seed)} for seed in (101, 102)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    use_external_data_format=True)


# -- one mode, in its own process -----------------------------------------------------------------------


def _decoder(mode: str, work: Path, threads: int):
    if mode.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        dtype = torch.bfloat16 if mode == "torch_bf16" else torch.float32
        decoder = xl_vae().decoder.to(dtype)

        def run(z):
            with torch.inference_mode():
                return decoder(torch.from_numpy(z).to(dtype)).float().numpy()

        return run
    import onnxruntime as ort

    if mode == "ort_fp32_runtime":
        return _runtime_decoder(ort, work, threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(str(work / f"{mode}.onnx"), so, providers=["CPUExecutionProvider"])
    return lambda z: session.run(None, {"latents": z})[0]


def _runtime_decoder(ort, work: Path, threads: int):
    from acestep_edge.models.config import xl_base
    from acestep_edge.runtime.bundle import session_options
    from acestep_edge.runtime.postprocess import exact_tile_overlap, tiled_decode

    so = session_options(ort, max(1, threads // WORKERS), "vae_decoder")
    so.log_severity_level = 3
    session = ort.InferenceSession(str(work / "ort_fp32.onnx"), so, providers=["CPUExecutionProvider"])
    vae = xl_base().vae
    hop, overlap = vae.hop_length, exact_tile_overlap(vae.downsampling_ratios)

    def run(z):  # [1, 64, T] → [1, channels, T·hop], as the other modes
        return tiled_decode(lambda w: session.run(None, {"latents": w})[0], z.transpose(0, 2, 1), hop,
                            overlap=overlap, workers=WORKERS)[None]

    return run


def run_mode(mode: str, work: Path, frames: int, threads: int, repeats: int) -> dict:
    import os

    import numpy as np
    from acestep_edge.bench.system import peak_rss_bytes

    start = time.perf_counter()
    decode = _decoder(mode, work, threads)
    load_s = time.perf_counter() - start
    z = latents(frames)
    audio = decode(z)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = os.times(), time.perf_counter()
        audio = decode(z)
        c1, w1 = os.times(), time.perf_counter()
        walls.append(w1 - w0)
        cpus.append(c1.user + c1.system - c0.user - c0.system)
    np.save(work / f"out_{mode}.npy", audio[0])
    seconds = frames / LATENT_RATE
    return {"mode": mode, "frames": frames, "load_s": load_s, "wall_s": walls, "cpu_s": cpus,
            "s_per_s": statistics.median(walls) / seconds, "cpu_s_per_s": statistics.median(cpus) / seconds,
            "peak_rss_bytes": peak_rss_bytes(), "audio_finite": bool(np.isfinite(audio).all())}


# -- driver ---------------------------------------------------------------------------------------------


def song_frames(overlap: int, chunk: int = 512, frames: int = SONG_FRAMES, workers: int = 1) -> int:
    """Latent frames the runtime's tiled decode runs for a `frames`-long render (`workers` windows at once)."""
    from acestep_edge.runtime.postprocess import worker_windows

    return sum(we - ws for ws, we, _, _ in worker_windows(frames, chunk, overlap, workers))


def summarise(records: list[dict], work: Path) -> list[dict]:
    """Adds each mode's STFT distance and errors to torch fp32's audio, its ratios to the fastest torch mode
    (wall, and CPU time against that same mode), and its cost per second of a 600 s render."""
    import numpy as np
    from acestep_edge.export.parity import stft_log_magnitude_distance
    from acestep_edge.models.config import xl_base
    from acestep_edge.runtime.postprocess import OFFICIAL_OVERLAP, exact_tile_overlap

    ref = np.load(work / "out_torch_fp32.npy") if (work / "out_torch_fp32.npy").exists() else None
    torch_runs = [r for r in records if r["mode"].startswith("torch")]
    best = min(torch_runs, key=lambda r: r["s_per_s"], default=None)
    exact = exact_tile_overlap(xl_base().vae.downsampling_ratios)
    song = {o: song_frames(o) / SONG_FRAMES for o in (OFFICIAL_OVERLAP, exact)}
    for r in records:
        out = np.load(work / f"out_{r['mode']}.npy")
        if ref is not None:
            d = out.astype(np.float64) - ref
            r["stft_db"] = stft_log_magnitude_distance(out, ref)
            r["max_rel_err"] = float(np.abs(d).max() / np.abs(ref).max())
            r["rms_rel_err"] = float(np.sqrt(np.mean(d ** 2) / np.mean(ref.astype(np.float64) ** 2)))
        if best is not None:
            r["x_best_torch"] = r["s_per_s"] / best["s_per_s"]
            r["x_best_torch_cpu"] = r["cpu_s_per_s"] / best["cpu_s_per_s"]
        factors = song
        if r["mode"] == "ort_fp32_runtime":  # its clip ran 2 windows (context included): per frame, then the song's
            frames = r["frames"]
            clip = song_frames(exact, frames=frames, workers=WORKERS) / frames
            factors = {o: song_frames(o, workers=WORKERS) / SONG_FRAMES / clip for o in song}
        r["song_s_per_s"] = {f"overlap_{o}": r["s_per_s"] * f for o, f in factors.items()}
        r["song_cpu_s_per_s"] = {f"overlap_{o}": r["cpu_s_per_s"] * f for o, f in factors.items()}
    return records


def table(records: list[dict]) -> None:
    nan = float("nan")
    print(f"{'mode':16s} {'s/s wall':>9s} {'s/s cpu':>8s} {'x torch wall/cpu':>17s} {'peak GB':>8s} {'STFT dB':>8s} "
          f"{'max rel':>9s} {'600 s render, cpu s/s (overlap 64 / exact)':>43s}")
    for r in records:
        song = " / ".join(f"{v:.3f}" for v in r["song_cpu_s_per_s"].values())
        ratio = f"{r.get('x_best_torch', nan):.2f} / {r.get('x_best_torch_cpu', nan):.2f}"
        print(f"{r['mode']:16s} {r['s_per_s']:9.3f} {r['cpu_s_per_s']:8.3f} {ratio:>17s} "
              f"{r['peak_rss_bytes'] / 1e9:8.2f} {r.get('stft_db', nan):8.3f} {r.get('max_rel_err', nan):9.2e} "
              f"{song:>43s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vae-bench"))
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--summary-only", action="store_true", help="re-print the table of --json, run nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one, args.work, args.frames, args.threads, args.repeats)))
        return
    if args.summary_only:
        table(summarise(json.loads(args.json.read_text())["records"], args.work))
        return
    prepare(args.work)
    records = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--work", str(args.work), "--frames", str(args.frames), "--threads",
               str(args.threads), "--repeats", str(args.repeats), "--one", mode]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        records.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = records[-1]
        print(f"{mode:16s} {r['s_per_s']:.3f} s/s wall  {r['cpu_s_per_s']:.3f} s/s cpu  "
              f"peak {r['peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr, flush=True)
    records = summarise(records, args.work)
    import onnxruntime
    import torch

    cpu_flags = open("/proc/cpuinfo").read().split()
    flags = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in cpu_flags]
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(), "flags": flags,
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "frames": args.frames,
              "audio_s": args.frames / LATENT_RATE, "threads": args.threads, "repeats": args.repeats,
              "records": records}
    print(f"{result['date']}  {result['cpu']}  {' '.join(flags)}  onnxruntime {result['onnxruntime']}  "
          f"torch {result['torch']}  {args.frames} frames = {result['audio_s']:.2f} s, {args.threads} threads, "
          f"median of {args.repeats}")
    table(records)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
