"""Per-op-type time split of one DiT forward on CPU, from ONNX Runtime's own profiler.

    PYTHONPATH=$PWD python benchmarks/dit_cpu_profile.py [--variant int8_s8] [--work DIR] [--threads 2]
        [--runs 3] [--top 25] [--json out.json]

The model, inputs and variants are benchmarks/dit_cpu_precision.py's (8 × 1024 DiT, 60 s, batch 2);
`--variant` is any of its ONNX variants. The session runs one warm-up forward, then `--runs` profiled
forwards; the trace's node events (`cat == "Node"`, `name` ending in `_kernel_time`) are summed per op
type and divided by the runs; a Scan's own event spans its body's nodes, which are listed under their own
types, so Scan is shown apart and not added again. "(outside kernels)" is the forward's wall time not inside
any kernel (session overhead, thread hand-offs). Under load kernel times include preemption: compare
shares, not seconds. Also prints the heaviest single nodes, which say which pieces of the
graph (attention, MLP, projections, layout copies) an op type's time belongs to.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dit_cpu_precision as bench  # noqa: E402


def profile(path: Path, threads: int, runs: int, feed: dict, form: str | None, options: dict) -> dict:
    import onnxruntime as ort

    so = bench.session_options(threads, options)
    so.enable_profiling = True
    so.profile_file_prefix = f"/tmp/dit_cpu_profile_{os.getpid()}"
    session, _ = bench.create_session(path, so, form)
    session.run(None, feed)  # warm-up (its events are dropped below)
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        walls.append(time.perf_counter() - t)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = runs_seen[-runs]["ts"] if len(runs_seen) >= runs else 0
    per_type: dict[str, float] = collections.defaultdict(float)
    per_node: dict[tuple[str, str], float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < first_timed:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_type[op] += e["dur"] / 1e6 / runs
        per_node[(op, e["name"][: -len("_kernel_time")])] += e["dur"] / 1e6 / runs
    wall = sum(walls) / runs
    kernels = sum(v for op, v in per_type.items() if op not in CONTAINERS)
    return {"wall_s": wall, "kernel_s": kernels, "per_type": dict(per_type),
            "top_nodes": sorted(((v, op, n) for (op, n), v in per_node.items()), reverse=True)[:60],
            "ort_version": ort.__version__}


# Ops that run a subgraph: their time includes their body's nodes, which the trace lists on their own.
CONTAINERS = ("Scan", "Loop", "If")


def split_table(result: dict) -> str:
    wall, kernels = result["wall_s"], result["kernel_s"]
    lines = [f"forward {wall:.3f} s wall (mean of profiled runs), kernels {kernels:.3f} s",
             "| op type | s per forward | share of kernel time |", "|---|---:|---:|"]
    for op, s in sorted(result["per_type"].items(), key=lambda kv: -kv[1]):
        if op in CONTAINERS:
            continue
        if s < 5e-4 * kernels:
            continue
        lines.append(f"| {op} | {s:.4f} | {100 * s / kernels:.1f} % |")
    for op in CONTAINERS:
        if op in result["per_type"]:
            lines.append(f"| ({op}, incl. its body's ops above) | {result['per_type'][op]:.4f} | |")
    lines.append(f"| (outside kernels) | {max(wall - kernels, 0):.4f} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="int8_chosen", choices=bench.ALL_VARIANTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dit_cpu_precision"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=20, help="heaviest single nodes to list")
    parser.add_argument("--no-spin", action="store_true",
                        help="threads sleep instead of busy-waiting (loaded machines)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    bench.NO_SPIN = args.no_spin

    args.work.mkdir(parents=True, exist_ok=True)
    preset = bench.bench_preset()
    feed = bench.inputs(preset)
    root = bench.checkpoint(args.work, preset)
    fp32 = bench.export_fp32(root, preset, args.work / "dit_fp32.onnx")
    path = bench.build_variant(args.variant, args.work, fp32)
    form, options = bench.variant_runtime(args.variant)
    print(json.dumps({"variant": args.variant, "form": form, "options": options, "no_spin": args.no_spin,
                      "cpu": bench.cpu_summary(),
                      "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
    result = profile(path, args.threads, args.runs, feed, form, options)
    print(split_table(result))
    print(f"\nheaviest {args.top} nodes (s per forward):")
    for s, op, name in result["top_nodes"][: args.top]:
        print(f"  {s:.4f}  {op:28s} {name}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
