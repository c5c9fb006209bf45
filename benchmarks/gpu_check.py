"""The GPU check behind benchmarks/gpu_check.sh: providers, XL export (fp16, int8), 600 s renders, PyTorch, one table.

    python benchmarks/gpu_check.py --out DIR            # on a GPU machine (gpu_check.sh sets up onnxruntime-gpu)
    python benchmarks/gpu_check.py --out DIR --dry-run  # every step on CPU at tiny size

Steps, each timed and written to DIR/gpu_check.json as it finishes (a run cut short keeps what it had):
1. providers: onnxruntime's version and available providers, then real sessions on a small MatMul graph
   asking for CUDA and for TensorRT, and what `session.get_providers()` says each got;
2. a random-weight checkpoint (XL architecture, bf16; tiny in the dry run);
3. two exports side by side: an fp16 bundle for `--target gpu` (text encoder, condition encoder, DiT,
   VAE decoder; `--full-attention auto` keeps the DiT's attention one fp16 `Attention` op there) and
   the DiT alone in int8 for `--target gpu`, which joins the fp16 bundle's other graphs;
4. the fp16 GEMM peak of ONNX Runtime on the device;
5. per bundle, in its own process: a 2-step warm-up render at the same length, then one render of the
   example request (APG, CFG interval [0, 0.85]) at `--duration` and `--steps`;
6. the PyTorch reference (bf16, SDPA) on the same checkpoint, request and noise (warm-up + one render);
7. one table: DiT ms/step, end-to-end, real-time factor, TFLOP/s, share of the fp16 GEMM peak, device
   memory, PyTorch / this row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MATMUL = ROOT / "acestep_edge" / "bench" / "matmul_fp16.onnx"
RENDER_GRAPHS = ("text_encoder", "condition_encoder", "dit", "vae_decoder")
COLUMNS = ("row", "DiT ms/step", "end-to-end s", "RTF", "TFLOP/s", "% GEMM peak", "device GB", "PyTorch / this")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- child processes: one per side, so device memory and arenas are each side's own -------------------

def child_providers(dry: bool) -> dict:
    """What onnxruntime offers and what real sessions got, per asked provider."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and not dry:
        ort.preload_dlls()  # the CUDA/cuDNN libraries of torch's wheels, so the CUDA provider finds them
    report = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(), "sessions": {}}
    asks = {"cpu": ["CPUExecutionProvider"]} if dry else {
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
    for name, chain in asks.items():
        try:
            session = ort.InferenceSession(str(MATMUL), providers=chain)
            report["sessions"][name] = {"got": session.get_providers()}
        except Exception as exc:  # a provider whose libraries do not load raises on some builds
            report["sessions"][name] = {"got": [], "error": f"{type(exc).__name__}: {exc}"[:400]}
    return report


def child_gemm(provider: str) -> dict:
    from acestep_edge.bench.gemm import ort_gemm_peak

    return ort_gemm_peak(provider, None, "float16" if provider != "cpu" else "float32")


def child_onnx(bundle: str, provider: str, duration: float, steps: int, threads: int | None, cuda_graph: bool) -> dict:
    """A 2-step warm-up at the same length, then one timed render (acestep_edge/bench/onnx_side.py)."""
    import tempfile

    from acestep_edge.bench import onnx_side
    from acestep_edge.bench.system import device_memory_bytes, peak_rss_bytes
    from acestep_edge.runtime import sampler
    from acestep_edge.runtime.device import DeviceOptions
    from acestep_edge.runtime.pipeline import Pipeline
    from acestep_edge.runtime.request import parse_request

    t0 = time.perf_counter()
    pipeline = Pipeline.load(bundle, provider=provider, threads=threads, device=DeviceOptions(cuda_graph=cuda_graph))
    for name in RENDER_GRAPHS:
        pipeline.bundle.session(name)
    load_s = time.perf_counter() - t0
    request = parse_request(onnx_side.bench_request(duration, steps))
    noise = sampler.initial_noise(request.seed, request.latent_frames)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        warm = parse_request(onnx_side.bench_request(duration, 2))
        onnx_side._render_once(pipeline, warm, noise, Path(tmp))
        run = onnx_side._render_once(pipeline, request, noise, Path(tmp))
    manifest = pipeline.bundle.manifest
    guided50 = onnx_side.guided_steps(request, onnx_side.REFERENCE_STEPS, pipeline.defaults.shift)
    record = {"side": "onnx", "precision": manifest["graphs"]["dit"].get("precision"), "session_load_s": load_s,
              "end_to_end_s": run["end_to_end_s"], "vae_total_s": run["vae_total_s"], "frames": run["frames"],
              "providers_got": run["providers"], "warnings": run["warnings"],
              "attention": manifest["graphs"]["dit"].get("attention"),
              "quantization": manifest["graphs"]["dit"].get("quantization")}
    record.update(onnx_side.dit_summary(run["calls"], manifest["model"]["dit"], run["frames"], run["encoder_tokens"],
                                        steps, guided50))
    dev = device_memory_bytes() if provider != "cpu" else None
    record["device_memory_gb"] = dev / 1e9 if dev is not None else None
    record["peak_host_memory_gb"] = peak_rss_bytes() / 1e9
    return record


def child_torch(checkpoint: str, bundle: str, device: str, duration: float, steps: int, threads: int | None) -> dict:
    from acestep_edge.bench.torch_side import bench_torch

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    (record,) = bench_torch(Path(checkpoint), manifest, "bf16", device, threads, [duration], steps, 1, _log)
    return record


# -- the parent: steps in order, each result saved as it comes ---------------------------------------

class Check:
    def __init__(self, args):
        self.args, self.start = args, time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        # Per-step logs beside the bundles; $OUT gets one joined log (a device call returns at most 8 files).
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"dry_run": args.dry_run, "args": vars(args), "steps": {}}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                        PYTHONUNBUFFERED="1")

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def save(self, step: str, value) -> None:
        self.results["steps"][step] = value
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")

    def spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        with open(self.logs / f"{log_name}.log", "w") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, cwd=ROOT)

    def finish(self, proc: subprocess.Popen, step: str, started: float) -> dict:
        """Wait within the budget; the child's last stdout line is its JSON result."""
        try:
            stdout, _ = proc.communicate(timeout=max(5.0, self.left()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            result = {"error": "out of time (--budget-s)"}
        else:
            lines = stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                result = {"error": f"exit {proc.returncode}; see gpu_check.log, ===== {step}"}
            elif step.startswith("export"):  # `acestep-edge export` prints the bundle's inspect summary
                with (self.logs / f"{step}.log").open("a") as fh:
                    fh.write(stdout)
                result = {"inspect": lines}
            else:
                result = json.loads(lines[-1])
        result["wall_s"] = time.perf_counter() - started
        self.save(step, result)
        _log(f"[{time.perf_counter() - self.start:6.1f} s] {step}: "
             f"{'ok' if 'error' not in result else result['error']} ({result['wall_s']:.1f} s)")
        return result

    def join_logs(self) -> None:
        with (self.out / "gpu_check.log").open("w") as out:
            for log in sorted(self.logs.glob("*.log"), key=lambda p: p.stat().st_mtime):
                out.write(f"===== {log.stem}\n{log.read_text(errors='replace')[-20000:]}\n")

    def child(self, step: str, *argv: str) -> subprocess.Popen:
        return self.spawn([sys.executable, str(Path(__file__)), "--child", step, *argv], step)

    def run(self, step: str, *argv: str) -> dict:
        return self.finish(self.child(step, *argv), step, time.perf_counter())


def write_checkpoint(work: Path, dry: bool) -> Path:
    import torch

    from acestep_edge.models.config import tiny, xl_base
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = work / "checkpoint"
    if (root / ".done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    # The dry run: 2 DiT layers (one sliding, one full) keep every kind of layer at half the export time.
    write_random_checkpoint(root, tiny(num_layers=2) if dry else xl_base(), seed=0, layout="official",
                            dtype=torch.bfloat16)
    (root / ".done").write_text("")
    return root


def export_argv(checkpoint: Path, out: Path, precision: str, graphs) -> list[str]:
    argv = [sys.executable, "-m", "acestep_edge.cli", "export", "--checkpoint", str(checkpoint), "--out", str(out),
            "--precision", precision, "--target", "gpu", "--skip-parity"]
    for g in graphs:
        argv += ["--graphs", g]
    return argv


def join_int8(fp16: Path, int8_dit: Path, out: Path) -> Path:
    """A bundle of the fp16 bundle's graphs with the int8 DiT (files linked, manifest entry replaced)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest = json.loads((fp16 / "manifest.json").read_text())
    dit = json.loads((int8_dit / "manifest.json").read_text())["graphs"]["dit"]
    keep = {manifest["graphs"][g][k] for g in manifest["graphs"] if g != "dit" for k in ("file", "data")
            if manifest["graphs"][g].get(k)} | {f["file"] for f in manifest.get("files", {}).values()}
    for name in keep:
        os.symlink((fp16 / name).resolve(), out / name)
    for key in ("file", "data"):
        if dit.get(key):
            os.symlink((int8_dit / dit[key]).resolve(), out / dit[key])
    manifest["graphs"]["dit"] = dit
    manifest["export"]["command"] += "  # DiT: the int8 --target gpu export of the same checkpoint"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _num(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else fmt.format(value)


def table(rows: list[tuple[str, dict]], peak: float | None) -> list[str]:
    torch_row = next((r for name, r in rows if name.startswith("pytorch") and "error" not in r), None)
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for name, r in rows:
        if "error" in r:
            lines.append(" | ".join([name, f"not measured: {r['error']}"] + [""] * (len(COLUMNS) - 2)))
            continue
        tflops = r.get("dit_tflops_achieved")
        ratio = (None if torch_row is None or r is torch_row
                 else torch_row["dit_ms_per_step_median"] / r["dit_ms_per_step_median"])
        lines.append(" | ".join([
            name, _num(r["dit_ms_per_step_median"], "{:.1f}"), _num(r["end_to_end_s"], "{:.2f}"),
            _num(r["end_to_end_s"] / r["duration_s"], "{:.3f}"), _num(tflops, "{:.3g}"),
            _num(tflops / peak * 100 if tflops and peak else None, "{:.3g}"),
            _num(r.get("device_memory_gb"), "{:.2f}"), _num(ratio, "{:.2f}x")]))
    return lines


def main_parent(args) -> int:
    check = Check(args)
    dry = args.dry_run
    provider = "cpu" if dry else "cuda"
    providers = check.run("providers", *(["--dry-run"] if dry else []))
    got = providers.get("sessions", {}).get("cpu" if dry else "cuda", {}).get("got", [])
    check.results["cuda_ok"] = bool(got) and got[0] == ("CPUExecutionProvider" if dry else "CUDAExecutionProvider")
    t0 = time.perf_counter()
    ckpt = write_checkpoint(check.work, dry)
    check.save("checkpoint", {"path": str(ckpt), "wall_s": time.perf_counter() - t0})
    fp16, int8_dit = check.work / "xl-fp16-gpu", check.work / "xl-int8-gpu-dit"
    started = time.perf_counter()
    exports, jobs = {}, {}
    for step, out, precision, graphs in (("export_fp16", fp16, "fp16", RENDER_GRAPHS),
                                         ("export_int8", int8_dit, "int8", ["dit"])):
        if (out / "manifest.json").exists() and not args.fresh:  # a rerun on the same machine
            exports[step] = {"reused": str(out)}
            check.save(step, exports[step])
        else:
            jobs[step] = check.spawn(export_argv(ckpt, out, precision, graphs), step)
    exports.update({k: check.finish(p, k, started) for k, p in jobs.items()})
    bundles = []
    if "error" not in exports["export_fp16"]:
        bundles.append(("onnx fp16", fp16))
        if "error" not in exports["export_int8"]:
            bundles.append(("onnx int8", join_int8(fp16, int8_dit, check.work / "xl-int8-gpu")))
    gemm = check.run("gemm_peak", "--provider", provider)
    peak = gemm.get("tflops")
    rows = []
    threads = ["--threads", str(args.threads)] if args.threads else []
    graph = ["--cuda-graph"] if args.cuda_graph else []
    for i, (name, bundle) in enumerate(bundles):
        steps = args.steps if i == 0 else args.int8_steps
        r = check.run(f"render_{name.split()[-1]}", "--bundle", str(bundle), "--provider", provider, "--duration",
                      str(args.duration), "--steps", str(steps), *threads, *graph)
        rows.append((f"{name} ({steps} steps)", {**r, "duration_s": args.duration}))
    if bundles:
        r = check.run("pytorch", "--checkpoint", str(ckpt), "--bundle", str(bundles[0][1]), "--device",
                      "cpu" if dry else "cuda", "--duration", str(args.duration), "--steps", str(args.torch_steps),
                      *threads)
        rows.append((f"pytorch bf16 SDPA ({args.torch_steps} steps)", {**r, "duration_s": args.duration}))
    sessions = providers.get("sessions", {})
    got_text = "; ".join(f"{k} session got {v.get('got') or v.get('error')}" for k, v in sessions.items())
    head = (f"gpu_check{' --dry-run (CPU, tiny)' if dry else ''}: onnxruntime {providers.get('onnxruntime')} "
            f"({got_text or providers.get('error')}); GEMM peak {_num(peak, '{:.3g}')} TFLOP/s "
            f"({gemm.get('dtype')}, onnxruntime {provider}); {args.duration:g} s audio, request: the example "
            f"(APG, CFG interval [0, 0.85])")
    lines = [head, *table(rows, peak)]
    (check.out / "gpu_check_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    check.save("table", lines)
    check.join_logs()
    return 0 if check.results["cuda_ok"] and rows and all("error" not in r for _, r in rows) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU providers, tiny random checkpoint, few steps")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out", help="results folder")
    ap.add_argument("--work", default=None, help="checkpoint and bundles (default: /tmp/gpu-check-work)")
    ap.add_argument("--duration", type=float, default=None, help="audio seconds (600; dry run 10)")
    ap.add_argument("--steps", type=int, default=None, help="fp16 render steps (50; dry run 2)")
    ap.add_argument("--int8-steps", type=int, default=None, help="int8 render steps (50; dry run 2)")
    ap.add_argument("--torch-steps", type=int, default=None, help="PyTorch render steps (50; dry run 2)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cuda-graph", action="store_true", help="capture the DiT in CUDA graphs")
    ap.add_argument("--fresh", action="store_true", help="export again even where --work holds the bundles")
    ap.add_argument("--budget-s", type=float, default=490.0,
                    help="stop waiting for steps after this many seconds (the .sh kills the check at 510 s)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bundle"), ap.add_argument("--checkpoint"), ap.add_argument("--provider")
    ap.add_argument("--device")
    args = ap.parse_args()
    dry = args.dry_run
    args.duration = args.duration or (10.0 if dry else 600.0)
    for name in ("steps", "int8_steps", "torch_steps"):
        setattr(args, name, getattr(args, name) or (2 if dry else 50))
    args.work = args.work or ("/tmp/gpu-check-work-dry" if dry else "/tmp/gpu-check-work")
    if args.child is None:
        return main_parent(args)
    if args.child == "providers":
        result = child_providers(dry)
    elif args.child == "gemm_peak":
        result = child_gemm(args.provider or "cpu")
    elif args.child.startswith("render_"):
        result = child_onnx(args.bundle, args.provider, args.duration, args.steps, args.threads, args.cuda_graph)
    else:
        result = child_torch(args.checkpoint, args.bundle, args.device, args.duration, args.steps, args.threads)
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
