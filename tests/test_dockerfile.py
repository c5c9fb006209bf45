"""The Dockerfile's invariants (no container engine runs here): two stages, the wheel `pip wheel .` builds,
onnxruntime-gpu only, no torch, entrypoint `acestep-edge`; and its requirement rewrite run on a real wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued RUN
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins, args in _instructions():
        if ins == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((ins, args))
    return stages


def test_two_stages_build_then_cuda_runtime():
    stages = _stages()
    assert len(stages) == 2
    build, runtime = stages
    assert build[0][1].endswith("AS build")
    run_build = " ".join(a for i, a in build if i == "RUN")
    assert re.search(r"pip wheel .*--no-deps .* \.(\s|$)", run_build)
    args = dict(a.split("=", 1) for i, a in _instructions() if i == "ARG" and "=" in a)
    assert runtime[0][1].startswith("${CUDA_IMAGE}")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"])
    assert any(i == "COPY" and a.startswith("--from=build /wheels") for i, a in runtime)


def test_runtime_stage_has_onnxruntime_gpu_only_and_no_torch():
    runtime = _stages()[1]
    run = " ".join(a for i, a in runtime if i == "RUN")
    installs = re.findall(r"pip install ([^&]+)", run)
    assert any("onnxruntime-gpu==" in s for s in installs)
    for spec in installs:
        assert not re.search(r"(^|[\s\"'])onnxruntime(?!-gpu)", spec), spec
        assert "torch" not in spec
    assert any("--no-deps /wheels/acestep_edge-" in s for s in installs)  # the built wheel, nothing re-resolved
    assert "! pip show onnxruntime" in run and "find_spec('torch') is None" in run
    entry = [a for i, a in runtime if i == "ENTRYPOINT"]
    assert entry == ['["acestep-edge"]']


def test_readme_documents_docker_run():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("docker run"):][:600]
    assert "--gpus all" in block and ":/bundle" in block and ":/out" in block and "--provider cuda" in block


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("acestep_edge-*.whl")
    return path


@pytest.mark.export  # the build backend (setuptools>=77) comes with the [dev] extra
def test_wheel_carries_the_runtime_and_the_bench(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("acestep_edge/runtime/dit_runner.py", "acestep_edge/runtime/device.py",
                 "acestep_edge/bench/cli.py", "acestep_edge/bench/matmul_fp32.onnx",
                 "acestep_edge/demo_bundle/dit.onnx", "acestep_edge/demo_request.json"):
        assert name in names, name


@pytest.mark.export  # the build backend (setuptools>=77) comes with the [dev] extra
def test_requirement_rewrite_on_the_built_wheel(wheel):
    runs = " ".join(a for i, a in _stages()[0] if i == "RUN")
    (code,) = re.findall(r'python -c "(import email.*?)" > /wheels/requirements-gpu.txt', runs)
    code = code.replace("/wheels/", f"{wheel.parent}/")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    names = [re.split(r"[<>=!~ ;]", r, maxsplit=1)[0] for r in out]
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names and "numpy" in names and "click" in names
    assert not any(n.startswith("torch") for n in names)
    assert any(r.startswith("onnxruntime-gpu>=") for r in out)
