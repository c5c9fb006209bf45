# syntax=docker/dockerfile:1
# acestep-edge GPU image: stage 1 builds the wheel exactly as `pip wheel .` does; stage 2 is a slim CUDA
# runtime with that wheel and onnxruntime-gpu only (no torch, never both onnxruntime and onnxruntime-gpu).
#
#   docker build -t acestep-edge .
#   docker run --rm --gpus all -v "$PWD/acestep-xl:/bundle" -v "$PWD/out:/out" \
#       -v "$PWD/examples/requests:/requests:ro" acestep-edge \
#       generate /requests/aerial-loom-synth-cantata.json --bundle /bundle --out /out/ --provider cuda
#
# PyPI's onnxruntime-gpu (1.24 and later) is built for CUDA 13 with cuDNN 9; for a CUDA 12 driver stack
# build with --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg ORT_GPU=1.23.2.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
# The project's own wheel only (its dependencies are resolved in the runtime stage).
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 # The wheel's runtime requirements with onnxruntime swapped for onnxruntime-gpu (extras dropped).
 && python -c "import email, glob, re, zipfile; w = glob.glob('/wheels/acestep_edge-*.whl')[0]; z = zipfile.ZipFile(w); m = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA')))); reqs = [r for r in m.get_all('Requires-Dist') or [] if 'extra ==' not in r]; print('\n'.join(re.sub(r'^onnxruntime(?=[<>=!~ ;]|$)', 'onnxruntime-gpu', r) for r in reqs))" > /wheels/requirements-gpu.txt \
 && cat /wheels/requirements-gpu.txt

FROM ${CUDA_IMAGE} AS runtime
ARG ORT_GPU=1.31.1
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libsndfile1 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
COPY --from=build /wheels /wheels
# onnxruntime-gpu pinned first, then the wheel's other requirements, then the wheel itself without
# dependencies, so pip never pulls the CPU onnxruntime back in.
RUN pip install "onnxruntime-gpu==${ORT_GPU}" \
 && grep -v '^onnxruntime-gpu' /wheels/requirements-gpu.txt > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps /wheels/acestep_edge-*.whl \
 && rm -rf /wheels /tmp/requirements.txt \
 && python -c "import importlib.util as u, onnxruntime as o; assert u.find_spec('torch') is None; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()" \
 && ! pip show onnxruntime >/dev/null 2>&1
WORKDIR /work
VOLUME ["/bundle", "/out"]
ENTRYPOINT ["acestep-edge"]
CMD ["--help"]
