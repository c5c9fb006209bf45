"""DiT graph scaling in ONNX Runtime: peak memory and time vs length, sliding-window-only vs full attention.

    python benchmarks/dit_sliding_scaling.py [--tokens 500 1000 2000 4000 7500] [--ops standard plain]
        [--batches 1] [--variants sliding full] [--full-limit-gb 8]

Builds a small-width DiT (4 layers, hidden 256, GQA 4/2, head_dim 64, ±128 window) with seeded
random weights, exports only the `dit` graph once per (variant, ops) through the bundle's own
`DiTGraph` / `export_program` / `save_program`, then runs each (variant, ops, B, N) in a fresh
subprocess (onnxruntime + numpy only) so its peak RSS belongs to that run alone. N is the number of
DiT tokens; the graph's input has T = 2N latent frames (patch size 2), up to T = 15000 (600 s).

Memory: VmHWM is reset (/proc/self/clear_refs "5") right after session creation, then
extra = VmHWM after the runs − VmRSS right after session creation (inputs are built before the
session, so they are in the baseline). Time: median of 3 runs after 1 warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

PATCH = 2
ENCODER_SEQ = 128  # condition sequence length S, fixed for every N
SEED = 0

_CHILD = r"""
import json, statistics, sys, time
import numpy as np, onnxruntime as ort

from acestep_edge.bench.system import peak_rss_bytes, reset_peak_rss, rss_bytes

MB = 2 ** 20

path, batch, frames, seq, channels, enc_dim, repeats, threads = sys.argv[1:9]
batch, frames, seq, channels, enc_dim, repeats, threads = map(int, (batch, frames, seq, channels, enc_dim, repeats, threads))
rng = np.random.default_rng(0)
feed = {"x": rng.standard_normal((batch, frames, channels), dtype=np.float32),
        "t": rng.random(batch, dtype=np.float32),
        "encoder_states": rng.standard_normal((batch, seq, enc_dim), dtype=np.float32),
        "src_latents": rng.standard_normal((batch, frames, channels), dtype=np.float32),
        "chunk_mask": (rng.random((batch, frames)) > 0.5).astype(np.float32)}
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
base = rss_bytes() / MB
reset = reset_peak_rss()  # so session creation's own peak does not count
out = sess.run(None, feed)[0]  # warm-up
if out.shape != (batch, frames, channels) or not np.isfinite(out).all():
    raise SystemExit(f"bad output: shape {out.shape}, finite {np.isfinite(out).all()}")
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); sess.run(None, feed); times.append(time.perf_counter() - t0)
peak = peak_rss_bytes() / MB
print(json.dumps({"ms": 1e3 * statistics.median(times), "base_mb": base, "peak_mb": peak,
                  "extra_mb": peak - base, "hwm_reset": reset}))
"""


def bench_config(full: bool):
    """The small-width DiT preset: every layer sliding (±128) or, for contrast, every layer full."""
    from acestep_edge.models.config import tiny

    base = tiny()
    kind = "full_attention" if full else "sliding_attention"
    dit = dataclasses.replace(
        base.dit, num_hidden_layers=4, layer_types=(kind,) * 4, sliding_window=128, hidden_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=512,
    )
    return dataclasses.replace(base, dit=dit)


def export_dit(preset, ops: str, path: Path) -> Path:
    """Seeded random weights (same recipe as random checkpoints) → `dit` graph saved at `path`."""
    import torch

    from acestep_edge.export.graphs import DiTGraph, example_sizes, graph_specs
    from acestep_edge.export.onnx_export import export_program, save_program
    from acestep_edge.models.acestep import AceStepModel
    from acestep_edge.models.random_checkpoint import random_tensor

    torch.manual_seed(SEED)
    model = AceStepModel(preset.dit)
    state = {k: random_tensor(k, tuple(v.shape), SEED) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    spec = graph_specs(preset, "none")["dit"]  # the bare DiT contract: no adapter inputs
    # Trace at more than two query blocks of DiT tokens: with the default example (T = 37, 19 tokens)
    # a ±128 window gives ONE block, the exporter specialises the length and the graph only runs at
    # T = 37 (its input dims are still renamed symbolic). Odd T keeps the patch padding in the graph.
    frames = PATCH * (2 * preset.dit.sliding_window + 3) + 1
    example = spec.example(example_sizes(frames=frames), preset, torch.Generator().manual_seed(SEED))
    program = export_program(spec, DiTGraph(model.eval()), preset, ops, args=example)
    save_program(program, path)
    return path


def run_child(path: Path, preset, batch: int, tokens: int, repeats: int, threads: int) -> dict:
    args = [sys.executable, "-c", _CHILD, str(path), str(batch), str(PATCH * tokens), str(ENCODER_SEQ),
            str(preset.dit.audio_acoustic_hidden_dim), str(preset.dit.encoder_hidden_size), str(repeats),
            str(threads)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def full_scores_mb(preset, batch: int, tokens: int) -> float:
    """One fp32 [B, Hq, N, N] score tensor; a full layer holds a few of these at once."""
    return batch * preset.dit.num_attention_heads * tokens * tokens * 4 / 2**20


def should_skip(variant: str, preset, batch: int, tokens: int, prev: tuple[int, float] | None,
                limit_mb: float) -> str | None:
    if variant != "full":
        return None
    if 3 * full_scores_mb(preset, batch, tokens) > limit_mb:
        return f"3 × N² scores ≈ {3 * full_scores_mb(preset, batch, tokens) / 1024:.1f} GB"
    if prev is not None:  # quadratic extrapolation from the previous measured point
        predicted = prev[1] * (tokens / prev[0]) ** 2
        if predicted > limit_mb:
            return f"predicted {predicted / 1024:.1f} GB"
    return None


def fmt_ratio(cur: float, prev: float | None) -> str:
    return "" if prev is None or prev <= 0 else f"{cur / prev:.2f}×"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[500, 1000, 2000, 4000, 7500])
    parser.add_argument("--ops", nargs="+", default=["standard", "plain"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--variants", nargs="+", default=["sliding", "full"], choices=["sliding", "full"])
    parser.add_argument("--full-limit-gb", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    args = parser.parse_args(argv)
    if max(args.tokens) * PATCH > 15000:
        parser.error("at most 7500 DiT tokens (T = 15000 latent frames, the contract's maximum)")

    import onnx
    import onnxruntime
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, {args.threads} threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            preset = bench_config(full=variant == "full")
            for ops in args.ops:
                path = export_dit(preset, ops, Path(tmp) / f"dit-{variant}-{ops}.onnx")
                for batch in args.batches:
                    prev = None
                    for tokens in sorted(args.tokens):
                        row = {"variant": variant, "ops": ops, "B": batch, "N": tokens, "T": PATCH * tokens}
                        skip = should_skip(variant, preset, batch, tokens, prev, args.full_limit_gb * 1024)
                        if skip:
                            row["skipped"] = skip
                        else:
                            row.update(run_child(path, preset, batch, tokens, args.repeats, args.threads))
                            if "extra_mb" in row:
                                prev = (tokens, row["extra_mb"])
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = ["| variant | ops | B | N (tokens) | T (frames) | ms | ms/N ×1000 | time ratio | extra MB | MB/N ×1000 | mem ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    prev = {}
    for r in rows:
        key = (r["variant"], r["ops"], r["B"])
        head = f"| {r['variant']} | {r['ops']} | {r['B']} | {r['N']} | {r['T']} |"
        if "ms" not in r:
            why = r.get("skipped") or f"failed: {r.get('error')}"
            lines.append(f"{head} skipped ({why}) | | | | | |")
            continue
        p = prev.get(key)
        lines.append(
            f"{head} {r['ms']:.0f} | {1e3 * r['ms'] / r['N']:.1f} | {fmt_ratio(r['ms'], p and p['ms'])} | "
            f"{r['extra_mb']:.0f} | {1e3 * r['extra_mb'] / r['N']:.0f} | {fmt_ratio(r['extra_mb'], p and p['extra_mb'])} |")
        prev[key] = r
    lines.append("")
    lines.append("Ratios are vs the previous N of the same row group; N ratios are 2, 2, 2, 1.875.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
