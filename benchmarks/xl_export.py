"""XL bundle export (low-memory path) and one ONNX Runtime CPU DiT step in a fresh process: time and peak RSS.

    python benchmarks/xl_export.py --checkpoint /tmp/acestep-xl-random --out /tmp/xl-bundle [--skip-parity]
    python benchmarks/xl_export.py --out /tmp/xl-bundle --no-export      # only the DiT step

Each measurement runs in its own child process, so its peak RSS is not inflated by the parent.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def dit_step(bundle: Path, frames: int, seq: int) -> dict:
    """Child mode: one DiT call on random inputs; returns timings, output check and peak RSS."""
    import numpy as np
    import onnxruntime as ort

    manifest = json.loads((bundle / "manifest.json").read_text())
    dit = manifest["model"]["dit"]
    c, d = dit["audio_acoustic_hidden_dim"], dit["encoder_hidden_size"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(bundle / "dit.onnx"), opts, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - t0
    rss_session = _vm_hwm()
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((1, frames, c), dtype=np.float32), "t": np.array([0.5], np.float32),
            "encoder_states": rng.standard_normal((1, seq, d), dtype=np.float32),
            "src_latents": rng.standard_normal((1, frames, c), dtype=np.float32),
            "chunk_mask": np.ones((1, frames), np.float32)}
    t0 = time.perf_counter()
    (out,) = session.run(["velocity"], feed)
    run = time.perf_counter() - t0
    return {"session_s": created, "run_s": run, "shape": list(out.shape), "finite": bool(np.isfinite(out).all()),
            "rss_after_session": rss_session, "peak_rss": _vm_hwm(), "onnxruntime": ort.__version__}


def run_export(checkpoint: str, out: str, skip_parity: bool) -> dict:
    cmd = ["acestep-edge", "export", "--checkpoint", checkpoint, "--out", out]
    cmd += ["--skip-parity"] if skip_parity else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"export failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # ru_maxrss of children = the largest child's peak (KiB on Linux); the export is the only child so far.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"command": " ".join(cmd), "wall_s": wall, "peak_rss": peak}


def graph_table(bundle: Path) -> list[str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    rows = ["| graph | .onnx | .onnx.data | parity |", "|---|---|---|---|"]
    for name, g in manifest["graphs"].items():
        par = g.get("parity")
        par_txt = ("skipped: " + par["skipped"]) if par and "skipped" in par else (
            f"max rel err {par['max_rel_err']:.2e}" if par else "not measured")
        rows.append(f"| {name} | {g['bytes'] / 1e6:.2f} MB | {g['data_bytes'] / 1e9:.3f} GB | {par_txt} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="/tmp/acestep-xl-random")
    ap.add_argument("--out", default="/tmp/xl-bundle")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--no-export", action="store_true", help="reuse the bundle at --out")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seq", type=int, default=8)
    ap.add_argument("--dit-step", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.dit_step:
        print(json.dumps(dit_step(Path(args.out), args.frames, args.seq)))
        return
    if not args.no_export:
        exp = run_export(args.checkpoint, args.out, args.skip_parity)
        print(f"export: {exp['command']}\n  wall {exp['wall_s']:.1f} s, peak RSS {exp['peak_rss'] / 1e9:.2f} GB")
    print("\n".join(graph_table(Path(args.out))))
    child = subprocess.run([sys.executable, __file__, "--dit-step", "--out", args.out, "--frames", str(args.frames),
                            "--seq", str(args.seq)], capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"DiT step failed ({child.returncode}):\n{child.stderr[-3000:]}")
    r = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"DiT step (onnxruntime {r['onnxruntime']} CPU, B=1 T={args.frames} S={args.seq}): "
          f"session {r['session_s']:.1f} s, run {r['run_s']:.2f} s, output {r['shape']} finite={r['finite']}, "
          f"VmHWM after session {r['rss_after_session'] / 1e9:.2f} GB, peak {r['peak_rss'] / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
