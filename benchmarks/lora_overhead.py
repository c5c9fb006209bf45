"""Adapter cost: DiT forward with / without a LoRA per precision, adapter switch time, peak memory; and XL int8.

    PYTHONPATH=$PWD python benchmarks/lora_overhead.py [--work DIR] [--repeats 5] [--threads 2]
        [--precisions fp32 fp16 int8 int4] [--json out.json]
    PYTHONPATH=$PWD python benchmarks/lora_overhead.py --xl [--work DIR] [--json out.json]

Small part: the 8 × 1024 DiT of benchmarks/dit_cpu_precision.py (60 s, batch 2, S = 128), a seeded
random checkpoint, its `dit` graph exported per precision with the bundle exporter (adapter inputs on
self/cross-attention q/k/v/o) plus an fp32 graph without adapter inputs (`--adapter-targets none`: what
the side paths cost when no adapter is given). Adapters: PEFT folders, rank 64 on q/k/v/o of self- and
cross-attention in every layer, random factors. Each variant runs in this one process, round robin (one
forward each per round after a warm-up); per forward the wall time and the process CPU time (user+sys,
all ONNX Runtime threads). Switch: `Adapters.resolve` of a new set (read the files, check, stack: a
render's whole switching cost; the session is untouched) and of a cached one. Peak RSS (VmHWM) per
precision in a fresh process that loads the session, resolves the adapter and runs one forward.

XL part: a random bf16 XL checkpoint, its int8 DiT exported (skipped when present), then in a fresh
process: session, a rank-64 q/k/v/o adapter at XL shapes resolved (cold), one forward (B = 2, T = 16,
S = 8), a second adapter resolved (switch), the first again (cached); VmHWM at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_cpu_precision import BATCH, bench_preset, checkpoint, cpu_summary, inputs  # noqa: E402

RANK = 64
KINDS = [f"{b}.{p}" for b in ("self_attn", "cross_attn") for p in ("q_proj", "k_proj", "v_proj", "o_proj")]


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_adapter(folder: Path, manifest_dit: dict, seed: int, rank: int = RANK) -> Path:
    """A PEFT folder with random rank-`rank` factors on every layer's attention projections."""
    import numpy as np
    from safetensors.numpy import save_file

    if (folder / "adapter_model.safetensors").exists():
        return folder
    from acestep_edge.runtime.adapters import _kinds

    kinds = _kinds(manifest_dit)
    rng = np.random.default_rng(seed)
    tensors = {}
    for kind in KINDS:
        layers, fin, fout = kinds[kind]
        for layer in range(layers):
            key = f"base_model.model.layers.{layer}.{kind}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, fin), np.float32) * fin ** -0.5)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((fout, rank), np.float32) * 0.01)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": rank, "peft_type": "LORA",
                                                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}))
    return folder


def export_dit(ckpt: Path, out: Path, precision: str, targets: str = "attention") -> Path:
    from acestep_edge.export.bundle import export_bundle

    if (out / "manifest.json").exists():
        return out
    return export_bundle(ckpt, out, precision=precision, graphs=["dit"], parity=False, adapter_targets=targets)


def session(bundle: Path, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(bundle / "dit.onnx"), so, providers=["CPUExecutionProvider"])


def manifest_dit(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["graphs"]["dit"]


def _forward(sess, feed):
    wall, cpu = time.perf_counter(), time.process_time()
    sess.run(None, feed)
    return time.perf_counter() - wall, time.process_time() - cpu


def small(args) -> dict:
    from acestep_edge.runtime.adapters import Adapters, LoraRef

    work = Path(args.work)
    preset = bench_preset()
    ckpt = checkpoint(work, preset)
    bundles = {p: export_dit(ckpt, work / f"lora-dit-{p}", p) for p in args.precisions}
    bundles["fp32_no_inputs"] = export_dit(ckpt, work / "lora-dit-none", "fp32", "none")
    dit = manifest_dit(bundles[args.precisions[0]])
    ad_a, ad_b = write_adapter(work / "adapter_a", dit, 1), write_adapter(work / "adapter_b", dit, 2)
    feed = inputs(preset)
    variants = {}
    for name, bundle in bundles.items():
        sess = session(bundle, args.threads)
        adapters = Adapters(manifest_dit(bundle))
        if adapters.kinds:
            variants[f"{name}/none"] = (sess, {**feed, **adapters.base().feeds})
            variants[f"{name}/rank64"] = (sess, {**feed, **adapters.resolve((LoraRef(str(ad_a), 1.0),)).feeds})
        else:
            variants[f"{name}"] = (sess, feed)
    for sess, f in variants.values():
        _forward(sess, f)  # warm-up
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for key, (sess, f) in variants.items():
            times[key].append(_forward(sess, f))
    rows = {k: {"wall_median_s": statistics.median(w for w, _ in v), "cpu_median_s": statistics.median(c for _, c in v),
                "wall_min_s": min(w for w, _ in v), "cpu_min_s": min(c for _, c in v)} for k, v in times.items()}
    ratios = {}
    for p in args.precisions:
        per_round = [(a[1] / b[1], a[0] / b[0]) for a, b in zip(times[f"{p}/rank64"], times[f"{p}/none"])]
        ratios[p] = {"rank64_over_none_cpu_median": statistics.median(c for c, _ in per_round),
                     "rank64_over_none_wall_median": statistics.median(w for _, w in per_round)}
    if "fp32" in args.precisions:
        per_round = [(a[1] / b[1], a[0] / b[0]) for a, b in zip(times["fp32/none"], times["fp32_no_inputs"])]
        ratios["fp32_side_paths_with_no_adapter"] = {"none_over_no_inputs_cpu_median": statistics.median(c for c, _ in per_round),
                                                    "none_over_no_inputs_wall_median": statistics.median(w for _, w in per_round)}
    switch = switch_times(dit, ad_a, ad_b)
    rss = {p: rss_of(bundles[p], ad_a, args.threads, "small") for p in args.precisions}
    rss["fp32_no_adapter"] = rss_of(bundles["fp32_no_inputs"], None, args.threads, "small") \
        if "fp32" in args.precisions else None
    return {"forward": rows, "ratios": ratios, "switch": switch, "peak_rss_mb": rss, "rounds": args.repeats,
            "threads": args.threads, "batch": BATCH, "cpu": cpu_summary()}


def switch_times(dit: dict, ad_a: Path, ad_b: Path) -> dict:
    from acestep_edge.runtime.adapters import Adapters, LoraRef

    adapters = Adapters(dit)
    out = {}
    for label, refs in (("cold_a", (LoraRef(str(ad_a), 1.0),)), ("cold_b", (LoraRef(str(ad_b), 0.7),)),
                        ("cached_a", (LoraRef(str(ad_a), 1.0),)),
                        ("cold_a_plus_b", (LoraRef(str(ad_a), 1.0), LoraRef(str(ad_b), 0.7)))):
        wall, cpu = time.perf_counter(), time.process_time()
        adapters.resolve(refs)
        out[label] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    return out


def rss_of(bundle: Path, adapter: Path | None, threads: int, part: str) -> float | None:
    cmd = [sys.executable, __file__, "--rss-child", str(bundle), str(adapter or ""), "--threads", str(threads),
           "--part", part]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"RSS child failed: {proc.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def rss_child(bundle: Path, adapter: str, threads: int, part: str) -> None:
    import numpy as np

    from acestep_edge.runtime.adapters import Adapters, LoraRef

    sess = session(bundle, threads)
    adapters = Adapters(manifest_dit(bundle))
    refs = (LoraRef(adapter, 1.0),) if adapter else ()
    factors = adapters.resolve(refs).feeds if adapters.kinds else {}
    if part == "small":
        feed = inputs(bench_preset())
    else:
        rng = np.random.default_rng(0)
        feed = {"x": rng.standard_normal((2, 16, 64), dtype=np.float32), "t": np.full(2, 0.5, np.float32),
                "encoder_states": rng.standard_normal((2, 8, 2048), dtype=np.float32),
                "src_latents": rng.standard_normal((2, 16, 64), dtype=np.float32),
                "chunk_mask": np.ones((2, 16), np.float32)}
    sess.run(None, {**feed, **factors})
    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))


def xl(args) -> dict:
    import torch

    from acestep_edge.models.config import xl_base
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    work = Path(args.work)
    ckpt = work / "xl-ckpt"
    if not ckpt.exists():
        write_random_checkpoint(ckpt, xl_base(), seed=0, layout="official", dtype=torch.bfloat16)
    bundle = export_dit(ckpt, work / "xl-int8-dit", "int8")
    dit = manifest_dit(bundle)
    ad_a, ad_b = write_adapter(work / "xl-adapter-a", dit, 1), write_adapter(work / "xl-adapter-b", dit, 2)
    proc = subprocess.run([sys.executable, __file__, "--xl-child", str(bundle), str(ad_a), str(ad_b)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["dit_bytes"] = sum(p.stat().st_size for p in bundle.glob("dit.onnx*"))
    result["adapter_bytes"] = (ad_a / "adapter_model.safetensors").stat().st_size
    return result


def xl_child(bundle: Path, ad_a: str, ad_b: str) -> None:
    from acestep_edge.runtime.adapters import Adapters, LoraRef

    out = {}
    start = time.perf_counter()
    sess = session(bundle, None)
    out["session_s"] = time.perf_counter() - start
    out["rss_after_session_mb"] = _peak_rss_mb()
    adapters = Adapters(manifest_dit(bundle))
    for label, refs in (("cold_a", (LoraRef(ad_a, 1.0),)), ("cold_b", (LoraRef(ad_b, 0.7),)),
                        ("cached_a", (LoraRef(ad_a, 1.0),))):
        wall, cpu = time.perf_counter(), time.process_time()
        feeds = adapters.resolve(refs).feeds
        out[f"switch_{label}"] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        if label == "cold_a":
            import numpy as np

            rng = np.random.default_rng(0)
            feed = {"x": rng.standard_normal((2, 16, 64), dtype=np.float32), "t": np.full(2, 0.5, np.float32),
                    "encoder_states": rng.standard_normal((2, 8, 2048), dtype=np.float32),
                    "src_latents": rng.standard_normal((2, 16, 64), dtype=np.float32),
                    "chunk_mask": np.ones((2, 16), np.float32)}
            wall = time.perf_counter()
            (v,) = sess.run(None, {**feed, **feeds})
            out["forward_s"] = time.perf_counter() - wall
            out["velocity_finite"] = bool(np.isfinite(v).all())
    out["factor_feed_bytes"] = sum(a.nbytes for a in feeds.values())
    out["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(out))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/acestep-lora-bench")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8", "int4"])
    parser.add_argument("--xl", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--rss-child", nargs=2, default=None)
    parser.add_argument("--part", default="small")
    parser.add_argument("--xl-child", nargs=3, default=None)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(Path(args.rss_child[0]), args.rss_child[1], args.threads, args.part)
    if args.xl_child:
        return xl_child(Path(args.xl_child[0]), args.xl_child[1], args.xl_child[2])
    Path(args.work).mkdir(parents=True, exist_ok=True)
    result = xl(args) if args.xl else small(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
