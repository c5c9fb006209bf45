"""Peak memory of loading an XL-size random checkpoint (written by our writer) into the PyTorch models.

    python benchmarks/xl_checkpoint_memory.py --dir /tmp/xl-ckpt [--dtype bfloat16]

Writes the checkpoint once (≈ 10 GB in bf16, sharded), then loads it in a fresh subprocess and
reports that process's peak RSS next to the size of the weights, so the ratio shows whether a
second copy of the state dict was ever held.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _vm_hwm_bytes() -> int:
    """Peak resident set of this process (VmHWM). Unlike ru_maxrss it is not inherited across exec."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _load(root: str, dtype_name: str) -> None:
    import torch

    from acestep_edge.models.checkpoint import load_checkpoint

    start = time.perf_counter()
    loaded = load_checkpoint(root, dtype=getattr(torch, dtype_name))
    seconds = time.perf_counter() - start
    weights = sum(
        p.numel() * p.element_size()
        for m in (loaded.acestep, loaded.text_encoder, loaded.vae)
        for p in m.parameters()
    )
    after_load = _vm_hwm_bytes()
    # Same-dtype tensors stay memory-mapped views of the files until read; touch every weight so
    # the figure below is the real resident size of a model in use.
    with torch.no_grad():
        checksum = sum(float(p.float().sum()) for m in (loaded.acestep, loaded.text_encoder, loaded.vae)
                       for p in m.parameters())
    peak = _vm_hwm_bytes()
    print(json.dumps({"dtype": dtype_name, "load_seconds": round(seconds, 1), "weights_bytes": weights,
                      "peak_rss_after_load_bytes": after_load, "peak_rss_after_touching_all_bytes": peak,
                      "peak_over_weights": round(peak / weights, 3), "checksum_finite": checksum == checksum}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/acestep-xl-random")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_only:
        _load(args.dir, args.dtype)
        return
    root = Path(args.dir)
    if not (root / "acestep-v15-xl-base" / "config.json").exists():
        import torch

        from acestep_edge.models.config import xl_base
        from acestep_edge.models.random_checkpoint import write_random_checkpoint

        start = time.perf_counter()
        write_random_checkpoint(root, xl_base(), seed=0, layout="official", dtype=torch.bfloat16)
        write_peak = _vm_hwm_bytes()
        print(json.dumps({"write_seconds": round(time.perf_counter() - start, 1), "write_peak_rss_bytes": write_peak}))
    subprocess.run([sys.executable, __file__, "--dir", str(root), "--dtype", args.dtype, "--load-only"], check=True)


if __name__ == "__main__":
    main()
