"""Sliding-window attention in ONNX Runtime: blocked local lowering vs banded mask over full scores.

    python benchmarks/bench_sliding_attention.py [--lengths 500 1000 2000 4000 7500] [--max-banded 4000]

Exports both graphs once (dynamic length), then times each (variant, T) in a fresh subprocess so
its peak RSS (getrusage maxrss, which sees ORT's allocations) belongs to that run alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HQ, HKV, D, WINDOW = 32, 8, 128, 128  # XL DiT self-attention: 32 query heads, GQA ×4, ±128 band

_CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np, onnxruntime as ort
path, length, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions(); so.intra_op_num_threads = threads
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feed = {"q": rng.standard_normal((1, %d, length, %d), dtype=np.float32),
        "k": rng.standard_normal((1, %d, length, %d), dtype=np.float32),
        "v": rng.standard_normal((1, %d, length, %d), dtype=np.float32)}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sess.run(None, feed)  # warm-up
times = []
for _ in range(repeats):
    t = time.perf_counter(); sess.run(None, feed); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"ms": 1e3 * statistics.median(times), "peak_mb": peak / 1024, "run_mb": (peak - before) / 1024}))
""" % (HQ, D, HKV, D, HKV, D)


def export_graphs(out: Path) -> dict[str, Path]:
    import torch

    from acestep_edge.kernels.attention import attention, band_mask
    from acestep_edge.kernels.lowering import translation_table, use_lowering

    class Blocked(torch.nn.Module):
        def forward(self, q, k, v):
            return attention(q, k, v, window=WINDOW)

    class Banded(torch.nn.Module):
        """What a naive export does: full L×L scores with the band as a boolean mask."""

        def forward(self, q, k, v):
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            mask = band_mask(q.shape[2], k.shape[2], WINDOW)
            scores = torch.matmul(q * D**-0.5, k.transpose(-1, -2))
            p = torch.softmax(torch.where(mask, scores, torch.finfo(torch.float32).min), -1)
            return torch.matmul(p, v)

    length = torch.export.Dim("length", max=100_000)
    args = (torch.randn(1, HQ, 300, D), torch.randn(1, HKV, 300, D), torch.randn(1, HKV, 300, D))
    paths = {}
    # The blocked path is what attention(window=...) takes for sliding layers in every lowering mode.
    for name, module in (("blocked", Blocked()), ("banded", Banded())):
        with use_lowering("plain"):
            program = torch.onnx.export(module, args, dynamo=True, opset_version=23, verbose=False,
                                        dynamic_shapes=({2: length},) * 3, input_names=["q", "k", "v"],
                                        custom_translation_table=translation_table("plain"))
        paths[name] = out / f"{name}.onnx"
        program.save(str(paths[name]))
    return paths


def run_child(path: Path, length: int, repeats: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(length), str(repeats), str(threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 1000, 2000, 4000, 7500])
    parser.add_argument("--max-banded", type=int, default=4000, help="skip banded above this T (its L×L scores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = ORT default)")
    args = parser.parse_args()

    import onnxruntime
    import torch

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, Hq={HQ} Hkv={HKV} D={D} window=±{WINDOW}, batch 1, fp32, CPU EP")
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_graphs(Path(tmp))
        print(f"{'T':>6} | {'blocked ms':>10} {'peak MB':>8} {'run MB':>7} | {'banded ms':>10} {'peak MB':>8} {'run MB':>7}")
        for length in args.lengths:
            row = [run_child(paths["blocked"], length, args.repeats, args.threads)]
            if length <= args.max_banded:
                row.append(run_child(paths["banded"], length, args.repeats, args.threads))
            else:
                row.append({"skipped": True})
            cells = []
            for r in row:
                if "ms" in r:
                    cells.append(f"{r['ms']:10.1f} {r['peak_mb']:8.0f} {r['run_mb']:7.0f}")
                else:
                    cells.append(f"{'skipped' if r.get('skipped') else 'error':>10} {'':>8} {'':>7}")
            print(f"{length:>6} | {cells[0]} | {cells[1]}", flush=True)
            for r in row:
                if "error" in r:
                    print(f"       error: {r['error']}")


if __name__ == "__main__":
    main()
