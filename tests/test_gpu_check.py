"""`benchmarks/gpu_check.sh --dry-run`: every step of the GPU check on CPU at tiny size, one table out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.export  # the check exports bundles and runs the PyTorch reference

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("onnx fp16 (2 steps)", "onnx int8 (2 steps)", "pytorch bf16 SDPA (2 steps)")


def test_dry_run_prints_every_row_with_finite_numbers(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row |"))
    columns = [c.strip() for c in lines[header].split("|")]
    assert columns == ["row", "DiT ms/step", "end-to-end s", "RTF", "TFLOP/s", "% GEMM peak", "device GB",
                       "PyTorch / this"]
    rows = {cells[0]: dict(zip(columns, cells)) for cells in
            ([c.strip() for c in line.split("|")] for line in lines[header + 2:])}
    assert set(rows) == set(ROWS), rows
    for name, row in rows.items():
        numbers = {k: float(row[k].rstrip("x")) for k in ("DiT ms/step", "end-to-end s", "RTF", "TFLOP/s",
                                                           "% GEMM peak")}
        assert all(math.isfinite(v) and v > 0 for v in numbers.values()), (name, row)
        assert numbers["RTF"] == pytest.approx(numbers["end-to-end s"] / 10, abs=1e-3)  # 10 s of audio
        assert row["device GB"] == "-"  # CPU: no device memory to report
        if name.startswith("onnx"):
            assert math.isfinite(float(row["PyTorch / this"].rstrip("x")))
        else:
            assert row["PyTorch / this"] == "-"
    # The head line names the provider the sessions really got and the GEMM peak the shares refer to.
    assert "cpu session got ['CPUExecutionProvider']" in lines[header - 1] and "GEMM peak" in lines[header - 1]
    result = json.loads((out / "gpu_check.json").read_text())
    steps = result["steps"]
    assert result["cuda_ok"] and (out / "gpu_check_table.md").read_text().strip().splitlines() == lines[header - 1:]
    # --full-attention auto on --target gpu: the fp16 DiT keeps one fused Attention op, the int8 one the Scan.
    assert steps["render_fp16"]["attention"]["full"] == "fused"
    assert steps["render_int8"]["attention"]["full"] == "chunked"
    assert steps["render_int8"]["quantization"]["provider"] == "cuda"  # MatMulNBits, the GPU int8 scheme
    assert steps["render_fp16"]["dit_steps"] == steps["render_int8"]["dit_steps"] == 2
    # What a device call brings back: at most 8 files; the children's logs are joined into one.
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.log", "gpu_check_table.md"]
    assert "===== export_fp16" in (out / "gpu_check.log").read_text()
