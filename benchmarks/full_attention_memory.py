"""Full attention at XL width in ONNX Runtime CPU: peak extra memory and time, fused lowerings vs chunked.

    python benchmarks/full_attention_memory.py [--tokens 1000 2000 3000] [--batch 2] [--threads 2]
        [--lowerings standard ort plain chunked-128] [--rounds 3] [--repeats 2]
        [--old-limit-gb 5] [--cap-gb 10] [--json rows.json]

What runs: the self-attention block of one XL DiT full-attention layer (models/layers.Attention:
q/k/v projections 2560 → 32 query / 8 KV heads × 128, per-head q/k RMSNorm, RoPE, attention,
o_proj back to 2560), seeded random weights, fp32, input x [B, N, 2560]. Not the MLP or the
cross-attention: this isolates the full-attention cost the lowering decides.

Lowerings (each exported once at N = 300, then run at every N, so every graph is length-dynamic):
`standard` = ONNX Attention-23 (the default before the chunked lowering), `ort` = com.microsoft
MultiHeadAttention, `plain` = MatMul → Softmax → MatMul, `chunked-<block>` = the Scan over query
blocks (kernels/attention_chunked_onnxscript.py) with that many queries per step.

Each (lowering, N, round) runs in a fresh subprocess under an address-space limit (`--cap-gb`,
RLIMIT_AS, as `prlimit --as`). Memory: VmHWM is reset right after session creation, then
extra = VmHWM after the runs − VmRSS after session creation (the input is built before the
session, so it is in the baseline). Time: median of `--repeats` runs after one warm-up, wall clock (`ms`) and process CPU time
(`cpu ms`, user + system of all threads: steadier than wall time on a shared machine). Rounds
rotate the order of the lowerings (A/B interleaved); the table gives the median over rounds and
the median of the per-round time ratios against `standard`. Fused lowerings are skipped at an N
whose memory, extrapolated quadratically from the previous N, would exceed `--old-limit-gb`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 2560, 32, 8, 128
TRACE_TOKENS = 300
SEED = 0

_CHILD = r"""
import json, statistics, sys, time
import numpy as np, onnxruntime as ort

from acestep_edge.bench.system import peak_rss_bytes, reset_peak_rss, rss_bytes

MB = 2 ** 20

path, batch, tokens, hidden, repeats, threads = sys.argv[1], *map(int, sys.argv[2:7])
x = np.random.default_rng(0).standard_normal((batch, tokens, hidden), dtype=np.float32)
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
base = rss_bytes() / MB
if not reset_peak_rss():  # session creation's peak does not count
    raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs): the peak would include session creation")
t0, c0 = time.perf_counter(), time.process_time()
out = sess.run(None, {"x": x})[0]  # warm-up (the reported time when repeats is 0)
warm = (time.perf_counter() - t0, time.process_time() - c0)
if out.shape != x.shape or not np.isfinite(out).all():
    raise SystemExit(f"bad output: shape {out.shape}, finite {np.isfinite(out).all()}")
times, cpu = [], []
for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    sess.run(None, {"x": x})
    times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
peak = peak_rss_bytes() / MB
if not times:
    times, cpu = [warm[0]], [warm[1]]
print(json.dumps({"ms": 1e3 * statistics.median(times), "cpu_ms": 1e3 * statistics.median(cpu), "base_mb": base,
                  "peak_mb": peak, "extra_mb": peak - base}))
"""


def parse_lowering(label: str) -> tuple[str, str, int | None]:
    """'standard' | 'ort' | 'plain' → (ops, 'fused', None); 'chunked-<block>' → ('standard', 'chunked', block)."""
    if label in ("standard", "ort", "plain"):
        return label, "fused", None
    if label.startswith("chunked-") and label[len("chunked-"):].isdigit():
        return "standard", "chunked", int(label[len("chunked-"):])
    raise argparse.ArgumentTypeError(f"unknown lowering {label!r}: standard, ort, plain or chunked-<block>")


def attention_block():
    """One XL full-attention layer's self-attention (RoPE from position 0), seeded random weights."""
    import torch

    from acestep_edge.models.config import AceStepConfig
    from acestep_edge.models.layers import Attention, rope_for_length
    from acestep_edge.models.random_checkpoint import random_tensor

    cfg = AceStepConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                        head_dim=HEAD_DIM)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention(cfg, window=None)

        def forward(self, x):
            rope = rope_for_length(x.shape[1], cfg.head_dim, cfg.rope_theta, x.device, x.dtype)
            return self.attn(x, rope)

    block = Block().eval()
    block.load_state_dict({k: random_tensor(k, tuple(v.shape), SEED) for k, v in block.state_dict().items()})
    return block


def export_lowering(block, label: str, path: Path) -> Path:
    import torch

    from acestep_edge.kernels.lowering import translation_table, use_lowering

    ops, form, query_block = parse_lowering(label)
    x = torch.randn(2, TRACE_TOKENS, HIDDEN, generator=torch.Generator().manual_seed(SEED))
    dims = ({0: torch.export.Dim("B", max=64), 1: torch.export.Dim("N", max=100_000)},)
    kwargs = {} if query_block is None else {"query_block": query_block}
    with use_lowering(ops, full_attention=form, **kwargs), torch.no_grad():
        program = torch.onnx.export(block, (x,), dynamo=True, opset_version=23, dynamic_shapes=dims,
                                    input_names=["x"], output_names=["y"], verbose=False,
                                    custom_translation_table=translation_table(ops))
    program.save(str(path))
    return path


def _cap(limit_bytes: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return set_limit


def run_child(path: Path, batch: int, tokens: int, repeats: int, threads: int, cap_gb: float) -> dict:
    args = [sys.executable, "-c", _CHILD, str(path), str(batch), str(tokens), str(HIDDEN), str(repeats), str(threads)]
    proc = subprocess.run(args, capture_output=True, text=True, preexec_fn=_cap(int(cap_gb * 2**30)))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": tail[0][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scores_mb(batch: int, tokens: int) -> float:
    return batch * HEADS * tokens * tokens * 4 / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1000, 2000, 3000])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lowerings", nargs="+", default=["standard", "ort", "plain", "chunked-128"])
    parser.add_argument("--rounds", type=int, default=3, help="fresh-process runs per (lowering, N), order rotated")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs per process after one warm-up (0: time the warm-up run itself)")
    parser.add_argument("--old-limit-gb", type=float, default=5.0,
                        help="skip a fused lowering where its extrapolated extra memory exceeds this")
    parser.add_argument("--cap-gb", type=float, default=10.0, help="address-space limit of each subprocess")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    args = parser.parse_args(argv)
    for label in args.lowerings:
        try:
            parse_lowering(label)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))

    import onnx
    import onnxruntime
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, batch {args.batch}, fp32", flush=True)
    block = attention_block()
    rows, last = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {label: export_lowering(block, label, Path(tmp) / f"{label}.onnx") for label in args.lowerings}
        for tokens in sorted(args.tokens):
            runs: dict[str, list[dict]] = {label: [] for label in args.lowerings}
            skipped = {}
            for label in args.lowerings:
                if parse_lowering(label)[1] == "fused" and label in last:
                    prev_n, prev_mb = last[label]
                    predicted = prev_mb * (tokens / prev_n) ** 2
                    if predicted > args.old_limit_gb * 1024:
                        skipped[label] = f"predicted {predicted / 1024:.1f} GB from N={prev_n}"
            for r in range(args.rounds):
                order = [lab for lab in args.lowerings if lab not in skipped]
                order = order[r % len(order):] + order[:r % len(order)] if order else order
                for label in order:
                    res = run_child(paths[label], args.batch, tokens, args.repeats, args.threads, args.cap_gb)
                    res["round"] = r
                    runs[label].append(res)
                    print(json.dumps({"lowering": label, "N": tokens, **res}), flush=True)
            for label in args.lowerings:
                rows.append(summarise(label, tokens, runs[label], runs.get("standard", []), skipped.get(label)))
                if "extra_mb" in rows[-1]:
                    last[label] = (tokens, rows[-1]["extra_mb"])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows, args.batch))


def summarise(label: str, tokens: int, runs: list[dict], reference: list[dict], skipped: str | None) -> dict:
    row = {"lowering": label, "N": tokens}
    if skipped:
        return {**row, "skipped": skipped}
    ok = [r for r in runs if "ms" in r]
    if not ok:
        return {**row, "error": runs[0].get("error") if runs else "not run"}
    row.update(ms=statistics.median(r["ms"] for r in ok), cpu_ms=statistics.median(r["cpu_ms"] for r in ok),
               extra_mb=max(r["extra_mb"] for r in ok), base_mb=statistics.median(r["base_mb"] for r in ok),
               rounds=len(ok))
    if label != "standard":
        for key in ("ms", "cpu_ms"):
            ref = {r["round"]: r[key] for r in reference if key in r}
            ratios = [r[key] / ref[r["round"]] for r in ok if r["round"] in ref]
            if ratios:
                row[f"{key}_vs_standard"] = statistics.median(ratios)
    return row


def table(rows: list[dict], batch: int) -> str:
    lines = ["| lowering | N | rounds | ms | ms / standard | cpu ms | cpu / standard | extra MB (max) | "
             "[B,Hq,N,N] fp32 MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['lowering']} | {r['N']} |"
        if "ms" not in r:
            why = r.get("skipped") or "failed: " + str(r.get("error"))
            lines.append(f"{head} {why} | | | | | | {scores_mb(batch, r['N']):.0f} |")
            continue
        ratio = {k: f"{r[k]:.2f}" if k in r else "" for k in ("ms_vs_standard", "cpu_ms_vs_standard")}
        lines.append(f"{head} {r['rounds']} | {r['ms']:.0f} | {ratio['ms_vs_standard']} | {r['cpu_ms']:.0f} | "
                     f"{ratio['cpu_ms_vs_standard']} | {r['extra_mb']:.0f} | {scores_mb(batch, r['N']):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
