"""XL-size bundle export per precision (fp16, int8, int4): peak RSS, DiT and bundle bytes, one ORT DiT step.

    python benchmarks/xl_quantized_export.py --checkpoint ./checkpoints --out-dir ./xl-quant \
        --precisions fp16 int8 int4 [--step int8] [--keep]

Each export runs alone under `/usr/bin/time -v` (its "Maximum resident set size" is the figure); the
DiT step runs in a fresh process through benchmarks/xl_export.py (session VmHWM and time). Bundles
are deleted after measuring unless --keep (an XL bundle is 5-21 GB). Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def export(checkpoint: str, out: Path, precision: str, extra: list[str]) -> dict:
    cmd = ["acestep-edge", "export", "--checkpoint", checkpoint, "--out", str(out), "--precision", precision,
           "--skip-parity", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"export {precision} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    manifest = json.loads((out / "manifest.json").read_text())
    graphs = {n: g["bytes"] + g["data_bytes"] for n, g in manifest["graphs"].items()}
    files = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"precision": precision, "command": " ".join(cmd), "wall_s": round(wall, 1), "peak_rss_bytes": peak_kb * 1024,
            "dit_bytes": graphs["dit"], "graph_bytes": graphs, "bundle_bytes": files,
            "graph_precisions": {n: g["precision"] for n, g in manifest["graphs"].items()},
            "dit_scheme": manifest["graphs"]["dit"].get("quantization")}


def dit_step(out: Path, frames: int, seq: int) -> dict:
    child = subprocess.run([sys.executable, str(HERE / "xl_export.py"), "--dit-step", "--out", str(out),
                            "--frames", str(frames), "--seq", str(seq)], capture_output=True, text=True)
    if child.returncode != 0:
        return {"failed": child.returncode, "stderr": child.stderr[-2000:]}
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True,
                    help="the official XL checkpoint folder (DiT, vae/, Qwen3-Embedding-0.6B/)")
    ap.add_argument("--out-dir", required=True, help="where the bundles go (each is 5-21 GB; removed unless --keep)")
    ap.add_argument("--precisions", nargs="+", default=["fp16", "int8", "int4"])
    ap.add_argument("--step", nargs="*", default=["int8"], help="precisions whose DiT runs one ORT CPU step")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seq", type=int, default=8)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--export-args", default="", help="extra export arguments, space separated")
    args = ap.parse_args()
    for precision in args.precisions:
        out = Path(args.out_dir) / f"xl-{precision}"
        result = export(args.checkpoint, out, precision, args.export_args.split())
        if precision in args.step:
            result["dit_step"] = dit_step(out, args.frames, args.seq)
        print(json.dumps(result), flush=True)
        if not args.keep:
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
