"""`acestep-edge bench`: the analytic FLOP count against torch's own count, the GEMM graphs, the command end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import acestep_edge
from acestep_edge.bench.flops import band_pairs, dit_flops, layer_windows

DEMO = acestep_edge.DEMO_BUNDLE


@pytest.mark.parametrize("n,window", [(1, 4), (5, 4), (9, 4), (10, 4), (37, 4), (300, 128), (257, 128), (40, None)])
def test_band_pairs_counts_the_mask(n, window):
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = np.ones((n, n), bool) if window is None else np.abs(i - j) <= window
    assert band_pairs(n, window) == int(mask.sum())


@pytest.mark.parametrize("sliding", [False, True], ids=["all-full", "alternating"])
@pytest.mark.parametrize("frames,tokens", [(37, 11), (24, 5)])
@pytest.mark.export
def test_dit_flops_equal_torch_flop_counter(sliding, frames, tokens):
    """torch's FlopCounterMode on the reference DiT (SDPA in its math form, so attention shows up as bmm).

    The counter charges masked attention as full N²; ours counts the band, so the difference must be
    exactly the masked-out pairs of the sliding layers.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from acestep_edge.models.config import tiny
    from acestep_edge.models.dit import DiT

    cfg = dataclasses.replace(tiny().dit, use_sliding_window=sliding)
    torch.manual_seed(0)
    model = DiT(cfg).eval()
    b = 2
    args = (torch.randn(b, frames, 64), torch.rand(b), torch.randn(b, tokens, cfg.encoder_hidden_size),
            torch.randn(b, frames, 128))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*args)
    n = -(-frames // cfg.patch_size)
    masked = sum(n * n - band_pairs(n, w) for w in layer_windows(cfg) if w is not None)
    ours = dit_flops(cfg, b, frames, tokens)
    assert counter.get_total_flops() - 4 * b * cfg.num_attention_heads * cfg.head_dim * masked == ours["total"]
    assert (masked > 0) == (sliding and n > cfg.sliding_window + 1)


def test_dit_flops_without_cross_kv_drop_only_the_kv_projections():
    from acestep_edge.models.config import bench

    cfg = bench().dit
    full, cached = dit_flops(cfg, 2, 1500, 300), dit_flops(cfg, 2, 1500, 300, cross_kv=False)
    kv = 8 * 2 * (2 * 2 * 300 * 1024 * 4 * 128)
    assert full["cross_proj"] - cached["cross_proj"] == kv
    assert full["total"] - cached["total"] == kv + full["condition_embedder"]


def test_bench_preset_is_the_issue_config():
    from acestep_edge.models.config import PRESETS

    dit = PRESETS["bench"]().dit
    assert (dit.num_hidden_layers, dit.hidden_size, dit.num_attention_heads, dit.num_key_value_heads, dit.head_dim,
            dit.intermediate_size, dit.sliding_window) == (8, 1024, 8, 4, 128, 3072, 128)
    assert list(dit.layer_types) == ["sliding_attention", "full_attention"] * 4


@pytest.mark.export  # builds the graphs with the onnx package
def test_committed_gemm_graphs_are_the_builder_output():
    import onnx

    from acestep_edge.bench.gemm import GRAPHS, build_matmul_model

    for dtype, path in GRAPHS.items():
        assert onnx.load(str(path)).SerializeToString() == build_matmul_model(dtype).SerializeToString()


def test_committed_gemm_graph_multiplies():
    from acestep_edge.bench.gemm import ort_gemm_peak

    result = ort_gemm_peak("cpu", threads=1, size=64, repeats=1)
    assert result["tflops"] > 0 and result["provider"] == "CPUExecutionProvider"


def _bench(args, tmp_path):
    from acestep_edge.cli import main

    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(main, ["bench", "--bundle", str(DEMO), "--threads", "1", "--steps", "2",
                                       "--repeats", "1", "--output", str(out), *args])
    return result, out


def test_bench_command_on_the_demo_bundle(tmp_path):
    result, out = _bench(["--durations", "10", "12"], tmp_path)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["duration_s"] for r in records] == [10.0, 12.0]
    for r in records:
        assert r["side"] == "onnx" and r["providers_got"]["dit"] == ["CPUExecutionProvider"]
        assert r["dit_steps"] == 2 and r["frames"] == (250 if r["duration_s"] == 10 else 300)
        assert 0 < r["dit_ms_per_step_median"] <= r["dit_ms_per_step_p90"]
        assert r["end_to_end_s"] >= r["dit_total_s"] + r["vae_total_s"]
        assert r["dit_total_50_steps_s_extrapolated"] > r["dit_total_s"]  # labelled extrapolation
        assert r["dit_tflops_achieved"] > 0 and r["gemm_peak_tflops"] > 0 and r["peak_host_memory_gb"] > 0
        assert r["system"]["onnxruntime"] and r["encoder_tokens"] > 1
    assert "DiT ms/step" in result.output and "e2e@50" in result.output
    assert result.output.count(f"acestep-edge {acestep_edge.__version__}, Python") == 1  # the header, once
    # Appends: a second run adds lines instead of replacing the file.
    result, out = _bench(["--durations", "10"], tmp_path)
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 3


@pytest.mark.export  # without torch the command stops earlier, asking for the extra
def test_torch_needs_a_checkpoint(tmp_path):
    result, _ = _bench(["--durations", "10", "--torch"], tmp_path)
    assert result.exit_code != 0 and "--checkpoint" in result.output


@pytest.mark.export
def test_torch_side_on_a_tiny_checkpoint(tiny_official):
    from acestep_edge.bench.torch_side import bench_torch
    from acestep_edge.runtime.bundle import read_manifest

    records = bench_torch(tiny_official, read_manifest(DEMO), "fp32", "cpu", 1, [10.0], 2, 1, log=lambda m: None)
    (r,) = records
    assert r["side"] == "torch" and r["dit_steps"] == 2 and r["frames"] == 250
    assert r["dit_ms_per_step_median"] > 0 and r["vae_chunks"] == 1 and r["end_to_end_s"] > r["dit_total_s"]
    assert r["dit_tflops_achieved"] > 0


def test_bench_onnx_side_never_imports_torch():
    code = ("import sys, acestep_edge.bench.cli, acestep_edge.bench.onnx_side, acestep_edge.bench.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
