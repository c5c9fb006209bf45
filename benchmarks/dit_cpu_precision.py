"""DiT forward on CPU per precision: ONNX Runtime fp32 / int8 / int4 beside PyTorch fp32 and bf16, one run.

    PYTHONPATH=$PWD python benchmarks/dit_cpu_precision.py [--work DIR] [--repeats 5] [--threads 2]
        [--variants torch_fp32 torch_bf16 ort_fp32 int8_chosen ...] [--quant-api CHECKOUT]
        [--json out.json] [--no-rss] [--no-spin]

The default variants make the whole CPU table of issue 19 (DEFAULT_VARIANTS); the first line printed
names the CPU and its flags. `int8_*` variants load the int8 graph as the runtime does: `int8_shipped_u8`
as stored (u8 weights, zero point 128), `int8_s8` rewritten to s8, `int8_chosen` the graph the int8 export
writes (MLPs in token chunks) in the form this CPU's flags pick (runtime/cpu_features.py,
runtime/int8_form.py), `int8_chosen_whole_mlp` the same without the MLP chunks (as shipped before); `_fused` / `_fa` / `_qb256` add fused
projections, the fused full-attention lowering, or query blocks of 256. `--no-spin` stops thread
busy-waiting: on a loaded machine CPU time then counts work only.

The model: the DiT of 8 layers × 1024 hidden (8 query / 4 KV heads, head_dim 128, intermediate
3072, alternating ±128 sliding / full layers as XL; encoder side as the tiny preset), a seeded
random checkpoint written to `--work`, its `dit` graph exported with the bundle's own
`DiTGraph` / `export_program` / `save_program` (opset-23 ops). Inputs: 60 s of audio (T = 1500
latent frames, 750 DiT tokens), batch 2 (cond + null), S = 128 condition tokens.

Each ONNX variant is the fp32 graph rewritten by a precision recipe (see `RECIPES`): ONNX Runtime's
stock tools (quantize_dynamic, MatMulNBitsQuantizer) or, for the `q_*` variants, the bundle's own
passes in export/quantize.py (in process, or from another checkout with `--quant-api CHECKOUT`, run in
a subprocess there); `*_fused` variants first apply export/fuse.py. Timing: all variants live in this
one process and are run round-robin (one forward each per round, after one warm-up), `--threads` threads for torch
(`torch.set_num_threads`) and ONNX Runtime (`intra_op_num_threads`); median and min per variant,
and each variant's ratio to torch bf16 per round. Error: each variant's velocity against ONNX
Runtime fp32 on the same inputs (max |Δ| / max |ref| and ‖Δ‖ / ‖ref‖). RSS: a fresh subprocess per
variant loads it and runs one forward; its peak RSS (VmHWM) is reported. Memory: the timing process
holds every variant at once (5.6 GB with the eight defaults); pass fewer `--variants` to stay lower.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

FRAMES = 1500  # 60 s at 25 latent frames per second
BATCH = 2
ENCODER_SEQ = 128
SEED = 0
TORCH_VARIANTS = ("torch_fp32", "torch_bf16")


def bench_preset():
    """8 × 1024 DiT on the tiny preset's encoder side (the encoder only feeds S × 48 states here)."""
    from acestep_edge.models.config import default_layer_types, tiny

    base = tiny()
    dit = dataclasses.replace(base.dit, num_hidden_layers=8, layer_types=default_layer_types(8), sliding_window=128,
                              hidden_size=1024, num_attention_heads=8, num_key_value_heads=4, head_dim=128,
                              intermediate_size=3072)
    return dataclasses.replace(base, dit=dit)


def inputs(preset):
    import numpy as np

    rng = np.random.default_rng(SEED)
    c, e = preset.dit.audio_acoustic_hidden_dim, preset.dit.encoder_hidden_size
    return {"x": rng.standard_normal((BATCH, FRAMES, c), dtype=np.float32),
            "t": rng.random(BATCH, dtype=np.float32),
            "encoder_states": rng.standard_normal((BATCH, ENCODER_SEQ, e), dtype=np.float32),
            "src_latents": rng.standard_normal((BATCH, FRAMES, c), dtype=np.float32),
            "chunk_mask": (rng.random((BATCH, FRAMES)) > 0.5).astype(np.float32)}


# -- model, export, recipes --------------------------------------------------------------------


def checkpoint(work: Path, preset) -> Path:
    import torch
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = work / "checkpoint"
    return _cached(root, lambda p: write_random_checkpoint(p, preset, seed=SEED, layout="official",
                                                           dtype=torch.float32))


def load_dit(root: Path, dtype=None):
    """The torch reference: `DiTGraph` (the exported wrapper, eager) over the checkpoint's weights."""

    from acestep_edge.export.graphs import DiTGraph
    from acestep_edge.models.checkpoint import load_checkpoint

    module = DiTGraph(load_checkpoint(root, components=("acestep",)).acestep).eval()
    return module.to(dtype) if dtype is not None else module


# Full/cross-attention lowerings the base graphs are exported with (export --full-attention/--query-block).
ATTENTION = {"": ("auto", None), "_fa": ("fused", None), "_qb256": ("chunked", 256)}


def export_fp32(root: Path, preset, path: Path, attention: str = "") -> Path:
    from acestep_edge.export.graphs import graph_specs
    from acestep_edge.export.onnx_export import export_program, save_program

    full, block = ATTENTION[attention]

    def make(p):
        save_program(export_program(graph_specs(preset, "none")["dit"], load_dit(root), preset, "standard",
                                    full_attention=full, query_block=block), p)

    return _cached(path, make)


def export_int8_bundle_graph(root: Path, path: Path) -> Path:
    """The DiT graph as `acestep-edge export --precision int8` (CPU) writes it: the default lowering with the
    MLPs in token chunks, quantised before the chunk markers become Scans (export/bundle.py)."""
    from acestep_edge.export.graphs import graph_specs
    from acestep_edge.export.onnx_export import export_program, save_program
    from acestep_edge.export.precision import apply_precision
    from acestep_edge.kernels.lowering import default_mlp_chunk

    preset = bench_preset()
    program = export_program(graph_specs(preset, "none")["dit"], load_dit(root), preset, "standard",
                             mlp_chunk=default_mlp_chunk(False))
    apply_precision("dit", "int8", program.model, "cpu")
    save_program(program, path)
    return path


def _save_ir(model, path: Path) -> Path:
    import onnx_ir as ir

    ir.save(model, path, external_data=path.name + ".data", size_threshold_bytes=1024)
    return path


def fused(src: Path, dst: Path) -> Path:
    """q/k/v, cross k/v and gate/up MatMuls fused into one MatMul each (export/fuse.py)."""
    import onnx_ir as ir
    from acestep_edge.export.fuse import fuse_shared_input_matmuls

    model = ir.load(src)
    fuse_shared_input_matmuls(model)
    return _save_ir(model, dst)


def dynamic_int8(src: Path, dst: Path, per_channel=True, reduce_range=True) -> Path:
    """ONNX Runtime's quantize_dynamic: int8 weights, uint8 activations quantised at run time
    (DynamicQuantizeLinear → MatMulInteger, fused by ORT into DynamicQuantizeMatMul /
    MatMulIntegerToFloat). MatMulConstBOnly: only weight MatMuls, never attention's Q·Kᵀ / P·V."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True},
                     use_external_data_format=True)
    return dst


def nbits(src: Path, dst: Path, bits: int, block: int, accuracy_level: int) -> Path:
    """ONNX Runtime's MatMulNBits (weight-only, symmetric, blockwise along K)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=accuracy_level, bits=bits)
    quant = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
    quant.process()
    onnx.save_model(quant.model.model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return dst


_QUANT_CHILD = r"""
import json, sys
import onnx_ir as ir
from acestep_edge.export import quantize as q
src, dst, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kw["op"] = {"dynamic": q.DYNAMIC, "nbits": q.NBITS}[kw["op"]]
model = ir.load(src)
q.quantize_model(model, q.QuantScheme(**kw))
ir.save(model, dst, external_data=dst.rsplit("/", 1)[-1] + ".data", size_threshold_bytes=1024)
"""
NO_SPIN = False  # --no-spin: every ONNX Runtime session without busy-waiting threads
QUANT_API: str | None = None  # --quant-api: a source checkout whose export/quantize.py provides the passes


def quant_api(src: Path, dst: Path, **scheme) -> Path:
    """The quant helper's pass (export/quantize.py quantize_model), run from `--quant-api` in a subprocess."""
    import os

    if QUANT_API is None:  # the passes of this checkout, in process
        try:
            import onnx_ir as ir
            from acestep_edge.export import quantize as q
        except ImportError:
            raise SystemExit("this variant needs export/quantize.py: pass --quant-api CHECKOUT") from None
        kw = dict(scheme, op={"dynamic": q.DYNAMIC, "nbits": q.NBITS}[scheme["op"]])
        model = ir.load(src)
        q.quantize_model(model, q.QuantScheme(**kw))
        return _save_ir(model, dst)
    env = dict(os.environ, PYTHONPATH=QUANT_API)
    proc = subprocess.run([sys.executable, "-c", _QUANT_CHILD, str(src), str(dst), json.dumps(scheme)], env=env, cwd=QUANT_API,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"quant pass failed for {dst.name}: {proc.stderr.strip()[-2000:]}")
    return dst


def _q(op, bits, block, symmetric, level, **extra):
    return lambda s, d: quant_api(s, d, op=op, bits=bits, block_size=block, symmetric=symmetric,
                                  accuracy_level=level, provider="cpu", **extra)


# name → (base graph: "fp32" or "fused", recipe(src, dst) or None for the base itself; "bundle": the graph
# `acestep-edge export --precision int8` writes, MLPs in token chunks)
RECIPES = {
    "int8_bundle": ("bundle", None),
    "ort_fp32": ("fp32", None),
    "ort_fp32_fused": ("fused", None),
    "int8_dyn": ("fused", lambda s, d: dynamic_int8(s, d)),
    "int8_dyn_unfused": ("fp32", lambda s, d: dynamic_int8(s, d)),
    "int8_dyn_fullrange": ("fused", lambda s, d: dynamic_int8(s, d, reduce_range=False)),
    "int8_nbits_b32_acc4": ("fp32", lambda s, d: nbits(s, d, 8, 32, 4)),
    "int4_nbits_b32_acc4": ("fp32", lambda s, d: nbits(s, d, 4, 32, 4)),
    "int4_nbits_b128_acc4": ("fp32", lambda s, d: nbits(s, d, 4, 128, 4)),
    "int4_nbits_b32_acc0": ("fp32", lambda s, d: nbits(s, d, 4, 32, 0)),
    # through the quant helper's passes (--quant-api)
    "q_int8_u8u8": ("fp32", _q("dynamic", 8, None, True, None, weight_dtype="uint8")),
    "q_int8_u8u8_fused": ("fused", _q("dynamic", 8, None, True, None, weight_dtype="uint8")),
    "q_int8_u8s8_rr": ("fp32", _q("dynamic", 8, None, True, None, weight_dtype="int8", reduce_range=True)),
    "q_int8_u8s8": ("fp32", _q("dynamic", 8, None, True, None, weight_dtype="int8")),
    "q_int8_u8s8_fused": ("fused", _q("dynamic", 8, None, True, None, weight_dtype="int8")),
    "q_int8_u8u8_fa": ("fp32_fa", _q("dynamic", 8, None, True, None, weight_dtype="uint8")),
    "q_int8_u8u8_fused_fa": ("fused_fa", _q("dynamic", 8, None, True, None, weight_dtype="uint8")),
    "q_int8_u8u8_fused_qb256": ("fused_qb256", _q("dynamic", 8, None, True, None, weight_dtype="uint8")),
    "q_int4_nbits_b32_acc4": ("fp32", _q("nbits", 4, 32, False, 4)),
    "q_int4_b64_acc4": ("fp32", _q("nbits", 4, 64, False, 4)),
    "q_int4_b128_acc4": ("fp32", _q("nbits", 4, 128, False, 4)),
    "q_int4_b128_acc4_sym": ("fp32", _q("nbits", 4, 128, True, 4)),
    "q_int4_b32_acc0": ("fp32", _q("nbits", 4, 32, False, 0)),
    "q_int4_b128_acc4_fused": ("fused", _q("nbits", 4, 128, False, 4)),
    "q_int4_nbits_b32_acc4_fused": ("fused", _q("nbits", 4, 32, False, 4)),
}
# Runtime variants: name → (the recipe whose file it loads, int8 weight form at session creation or None
# for the file as stored, session settings for `session_options`). The form is applied by the runtime's own
# rewrite (runtime/int8_form.py), as a bundle's session gets it; "chosen" = what this CPU's flags pick.
RUNTIME = {
    "int8_shipped_u8": ("q_int8_u8u8", "u8", {}),
    "int8_s8": ("q_int8_u8u8", "s8", {}),
    "int8_chosen": ("int8_bundle", "chosen", {}),
    "int8_chosen_whole_mlp": ("q_int8_u8u8", "chosen", {}),
    "int8_s8_fused": ("q_int8_u8u8_fused", "s8", {}),
    "int8_s8_fa": ("q_int8_u8u8_fa", "s8", {}),
    "int8_s8_fused_fa": ("q_int8_u8u8_fused_fa", "s8", {}),
    "int8_s8_fused_qb256": ("q_int8_u8u8_fused_qb256", "s8", {}),
    "int8_s8_nospin": ("q_int8_u8u8", "s8", {"spin": False}),
}
ALL_VARIANTS = list(RECIPES) + list(RUNTIME)
# The issue-19 table: PyTorch fp32/bf16, ORT fp32, int8 as stored (u8) and in the form this CPU gets, the
# fastest int8 graph variant measured (fused projections + fused full attention), MatMulNBits int8, and int4
# as shipped before (blocks of 32) and now (blocks of 128), with accuracy level 0 for comparison.
DEFAULT_VARIANTS = ("torch_fp32", "torch_bf16", "ort_fp32", "int8_shipped_u8", "int8_chosen", "int8_s8_fused_fa",
                    "int8_nbits_b32_acc4", "q_int4_nbits_b32_acc4", "q_int4_b128_acc4", "q_int4_b32_acc0")


def variant_runtime(name: str) -> tuple[str | None, dict]:
    """(int8 weight form, session settings) of a variant."""
    return RUNTIME[name][1:] if name in RUNTIME else (None, {})


def build_variant(name: str, work: Path, fp32: Path) -> Path:
    name = RUNTIME[name][0] if name in RUNTIME else name
    base, recipe = RECIPES[name]
    if base == "bundle":
        return _cached(work / f"dit_{name}.onnx", lambda p: export_int8_bundle_graph(work / "checkpoint", p))
    kind, _, attention = base.partition("_")  # "fp32" | "fused", then an ATTENTION key ("fa", "qb256")
    attention = f"_{attention}" if attention else ""
    if attention:
        fp32 = export_fp32(work / "checkpoint", bench_preset(), work / f"dit_fp32{attention}.onnx", attention)
    src = fp32 if kind == "fp32" else _cached(work / f"dit_fused{attention}.onnx", lambda p: fused(fp32, p))
    if recipe is None:
        return src
    return _cached(work / f"dit_{name}.onnx", lambda p: recipe(src, p))


def _cached(path: Path, make) -> Path:
    """Build `path` once; a `.done` marker written last means an interrupted build is redone."""
    done = path.with_name(path.name + ".done")
    if not done.exists():
        make(path)
        done.touch()
    return path


def data_bytes(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# -- running -----------------------------------------------------------------------------------


def session_options(threads: int, options: dict | None = None):
    """ONNX Runtime settings: `threads` intra-op threads, one inter-op; `options`: opt_level (basic /
    extended / all), spin (False: no busy-waiting), config (session config entries)."""
    import onnxruntime as ort

    options = dict(options or {})
    if NO_SPIN:
        options["spin"] = False
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    level = options.get("opt_level", "all")
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if options.get("spin") is False:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in options.get("config", {}).items():
        so.add_session_config_entry(key, value)
    return so


def create_session(path: Path, so, form: str | None):
    """A CPU session of `path`, its DynamicQuantizeMatMul weights in `form` (u8/s8/chosen; None: as stored)."""
    import onnxruntime as ort

    if form is None:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]), None
    from acestep_edge.runtime.cpu_features import int8_weight_form
    from acestep_edge.runtime.int8_form import staged_model, stored_form

    if form == "chosen":
        form = int8_weight_form(stored_form(path.read_bytes())[0] or "u8", override="auto")[0]
    staged, rewrite, cleanup = staged_model(path, form)
    try:
        return ort.InferenceSession(str(staged), so, providers=["CPUExecutionProvider"]), rewrite
    finally:
        cleanup()


def ort_session(path: Path, threads: int, form: str | None = None, options: dict | None = None):
    return create_session(path, session_options(threads, options), form)[0]


class TorchRunner:
    def __init__(self, root: Path, dtype_name: str, feed: dict):
        import torch

        self.torch = torch
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        self.module = load_dit(root, dtype)
        self.args = [torch.from_numpy(feed[k]).to(dtype) for k in ("x", "t", "encoder_states", "src_latents",
                                                                     "chunk_mask")]

    def __call__(self):
        with self.torch.inference_mode():
            return self.module(*self.args).float().numpy()


class OrtRunner:
    def __init__(self, path: Path, threads: int, feed: dict, name: str | None = None):
        self.session = ort_session(path, threads, *variant_runtime(name or ""))
        self.feed = feed

    def __call__(self):
        return self.session.run(None, self.feed)[0]


def _peak_rss_mb() -> float:
    from acestep_edge.bench.system import peak_rss_bytes

    return peak_rss_bytes() / 2 ** 20


def rss_child(name: str, target: str, threads: int) -> None:
    """In a fresh process: build the variant's runner, run one forward, print peak RSS (MB)."""
    import torch

    torch.set_num_threads(threads)
    preset = bench_preset()
    feed = inputs(preset)
    runner = (TorchRunner(Path(target), name.split("_")[1], feed) if name in TORCH_VARIANTS
              else OrtRunner(Path(target), threads, feed, name))
    runner()
    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))


def measure_rss(name: str, target: Path, threads: int) -> float | None:
    proc = subprocess.run([sys.executable, __file__, "--rss-child", name, str(target), "--threads", str(threads)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"  RSS child for {name} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def errors(out, ref) -> dict:
    import numpy as np

    d = out.astype(np.float64) - ref.astype(np.float64)
    return {"max_rel": float(np.abs(d).max() / np.abs(ref).max()),
            "rms_rel": float(np.linalg.norm(d) / np.linalg.norm(ref))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dit_cpu_precision"),
                        help="folder for the checkpoint and the ONNX variants (reused when present)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=list(TORCH_VARIANTS) + ALL_VARIANTS)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between forwards (thread pools go idle)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-variant RSS subprocesses")
    parser.add_argument("--quant-api", metavar="CHECKOUT",
                        help="source checkout providing export/quantize.py for the q_* variants (run in a subprocess)")
    parser.add_argument("--no-spin", action="store_true",
                        help="threads sleep instead of busy-waiting (ORT allow_spinning=0, OMP_WAIT_POLICY=PASSIVE): "
                             "on a loaded machine CPU time then measures work, not waiting")
    parser.add_argument("--rss-child", nargs=2, metavar=("NAME", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child, args.threads)
        return
    global QUANT_API, NO_SPIN
    QUANT_API = args.quant_api
    if args.no_spin:
        import os

        NO_SPIN = True
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP starts: before import

    import onnx
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "cpu": cpu_summary(), "threads": args.threads, "no_spin": args.no_spin,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(versions), flush=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    preset = bench_preset()
    feed = inputs(preset)
    t0 = time.perf_counter()
    root = checkpoint(work, preset)
    fp32 = export_fp32(root, preset, work / "dit_fp32.onnx")
    print(f"checkpoint + fp32 export ready in {time.perf_counter() - t0:.0f} s", flush=True)

    targets, sizes = {}, {}
    for name in args.variants:
        if name in TORCH_VARIANTS:
            targets[name] = root
        else:
            t0 = time.perf_counter()
            targets[name] = build_variant(name, work, fp32)
            sizes[name] = data_bytes(targets[name])
            print(f"{name}: {sizes[name] / 2**20:.0f} MiB ({time.perf_counter() - t0:.0f} s)", flush=True)

    runners = {}
    for name in args.variants:
        runners[name] = (TorchRunner(root, name.split("_")[1], feed) if name in TORCH_VARIANTS
                         else OrtRunner(targets[name], args.threads, feed, name))
    ref_runner = runners.get("ort_fp32") or OrtRunner(fp32, args.threads, feed)
    outs = {name: run() for name, run in runners.items()}  # warm-up round
    ref = outs.get("ort_fp32")
    ref = ref if ref is not None else ref_runner()
    times: dict[str, list[float]] = {n: [] for n in runners}
    cpu: dict[str, list[float]] = {n: [] for n in runners}  # process CPU time (all threads) per forward
    for r in range(args.repeats):
        for name, run in runners.items():
            time.sleep(args.pause)
            t, c = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in runners), flush=True)
    main_rss = _peak_rss_mb()
    del runners, ref_runner

    rows = []
    bf16 = times.get("torch_bf16")
    for name in args.variants:
        row = {"variant": name, "median_s": statistics.median(times[name]), "min_s": min(times[name]),
               "times_s": times[name],
               "cpu_median_s": statistics.median(cpu[name]), "bytes": sizes.get(name), **errors(outs[name], ref)}
        if bf16:
            row["ratio_to_torch_bf16"] = statistics.median(a / b for a, b in zip(times[name], bf16))
        if not args.no_rss:
            row["peak_rss_mb"] = measure_rss(name, targets[name], args.threads)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
    result = {"versions": versions, "config": config_summary(preset), "main_process_peak_rss_mb": main_rss,
              "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print()
    print(table(rows))


def cpu_summary() -> str:
    from acestep_edge.runtime.cpu_features import cpu_summary as summary

    return summary()


def config_summary(preset) -> dict:
    d = preset.dit
    return {"layers": d.num_hidden_layers, "hidden": d.hidden_size, "heads": d.num_attention_heads,
            "kv_heads": d.num_key_value_heads, "head_dim": d.head_dim, "intermediate": d.intermediate_size,
            "window": d.sliding_window, "layer_types": list(d.layer_types), "batch": BATCH, "frames": FRAMES,
            "tokens": FRAMES // d.patch_size, "encoder_seq": ENCODER_SEQ, "encoder_dim": d.encoder_hidden_size}


def table(rows: list[dict]) -> str:
    lines = ["| variant | median s | min s | CPU s | × torch bf16 | MiB on disk | peak RSS MiB | max rel err | rms rel err |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['bytes'] / 2**20:.0f}" if r.get("bytes") else ""
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else ""
        ratio = f"{r['ratio_to_torch_bf16']:.2f}" if "ratio_to_torch_bf16" in r else ""
        lines.append(f"| {r['variant']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['cpu_median_s']:.2f} | {ratio} | {size} | {rss} | "
                     f"{r['max_rel']:.4f} | {r['rms_rel']:.4f} |")
    lines.append("")
    lines.append("CPU s: process CPU time per forward, all threads (median).")
    lines.append("Errors are against ONNX Runtime fp32 on the same inputs; × torch bf16 is the median per-round ratio.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
