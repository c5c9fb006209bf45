#!/usr/bin/env bash
# One GPU check for a lent H200, in one device call (<= 9 minutes): onnxruntime-gpu up, CUDA (and
# TensorRT) sessions checked, XL-architecture bundle (random weights) exported fp16 + int8 for
# --target gpu, 600 s renders at 50 steps (APG, the example request's CFG interval), the PyTorch
# reference (bf16, SDPA) on the same GPU, one table. Steps and table: benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh --dry-run      # every step on CPU at tiny size (tests/test_gpu_check.py)
#   bash benchmarks/gpu_check.sh [gpu_check.py options]   # on the GPU machine; results in $OUT
#
# onnxruntime-gpu (CUDA 13 build, ~244 MiB) is over one call's 64 MiB, so it goes over in parts first.
# Here, once (Python 3.12 wheels for the machine):
#   echo /.gpu/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .gpu/whl onnxruntime-gpu==1.31.1 soundfile==0.13.1 cffi==2.0.0 pycparser==2.23 soxr==1.0.0
#   w=$(cd .gpu/whl && ls onnxruntime_gpu-*.whl); split -b 55m .gpu/whl/$w .gpu/$w.part-
#   i=1; for p in .gpu/$w.part-*; do mkdir -p .gpu/p$i; mv $p .gpu/p$i/; i=$((i+1)); done
#   cp .gpu/whl/soundfile-* .gpu/whl/cffi-* .gpu/whl/pycparser-* .gpu/whl/soxr-* .gpu/p1/
# Then one device call per part, back to back (a warm machine keeps /tmp ~30 s between calls),
# each carrying its folder: `mkdir -p /tmp/gpu-check-wheels && cp .gpu/pN/* /tmp/gpu-check-wheels/`;
# the last one carries the last part and runs:
#   cp .gpu/pN/* /tmp/gpu-check-wheels/ && bash benchmarks/gpu_check.sh
# This script joins the parts, installs the wheels into a scratch site folder first on PYTHONPATH
# (the machine's CPU onnxruntime stays where it is, shadowed), and checks what the sessions got.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
py=${PYTHON:-python3}
dry=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry=1; done
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if (( ! dry )); then
    wheels=${GPU_CHECK_WHEELS:-/tmp/gpu-check-wheels}
    site=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
    if compgen -G "$wheels/*.whl.part-*" > /dev/null; then
        for first in "$wheels"/*.whl.part-aa; do
            whl=${first%.part-aa}
            cat "$whl".part-* > "$whl" && rm -f "$whl".part-*
        done
    fi
    if compgen -G "$wheels/*.whl" > /dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$wheels"/*.whl
        export PYTHONPATH="$site:$PYTHONPATH"
    else
        echo "gpu_check: no wheels in $wheels: running with the machine's onnxruntime (CPU build?)" >&2
    fi
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
    exec timeout 510 "$py" "$here/gpu_check.py" "$@"
fi
exec "$py" "$here/gpu_check.py" "$@"
