"""Click commands `export` and `inspect`, registered on the `acestep-edge` group by acestep_edge/cli.py.

This module imports neither torch nor the exporter at import time: `export` loads them when it
runs, and `inspect` never needs them.
"""

from __future__ import annotations

import sys

import click

from acestep_edge.kernels.lowering import FULL_ATTENTION  # torch-free at import
from acestep_edge.kernels.lowering import MODES as OPS

# export/graphs.py GRAPH_NAMES, restated because that module imports torch (tests/test_export.py checks both agree).
GRAPHS = ("text_encoder", "condition_encoder", "dit", "vae_decoder", "vae_encoder", "audio_tokenizer",
          "audio_detokenizer")


def _log(msg: str) -> None:
    click.echo(msg, err=True)


@click.command("export")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(exists=True, file_okay=False),
              help="ACE-Step checkpoint folder: the official `checkpoints/` folder (DiT folder, vae/, "
                   "Qwen3-Embedding-0.6B/) or a diffusers folder (model_index.json, transformer/, ...).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write. Written to OUT.tmp-<pid> first and renamed at the end; an "
                   "existing bundle at OUT is replaced.")
@click.option("--layout", type=click.Choice(["auto", "official", "diffusers"]), default="auto", show_default=True,
              help="Checkpoint layout; auto detects it.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default="fp32", show_default=True,
              help="Bundle precision. fp16: DiT, text encoder and VAE weights and matmuls/convolutions in fp16 "
                   "(norms, softmax, angles fp32). int8/int4: weight-only quantised DiT block linears, other "
                   "graphs fp32. The condition encoder and audio tokenizer/detokenizer always stay fp32. Graph "
                   "IO is float32 in every precision.")
@click.option("--graph-precision", "graph_precision", default=None, metavar="GRAPH=PREC[,GRAPH=PREC...]",
              help="Per-graph overrides of --precision, e.g. 'vae_decoder=fp16,text_encoder=int8'. "
                   "text_encoder and dit take fp32/fp16/int8/int4, the VAE graphs fp32/fp16, the rest fp32.")
@click.option("--target", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Provider the int8/int4 schemes are chosen for: cpu = DynamicQuantizeMatMul int8 (fast CPU "
                   "integer GEMM), MatMulNBits int4 with int8 compute; gpu = MatMulNBits (CUDA kernels).")
@click.option("--allow-over-budget", is_flag=True,
              help="Keep a graph whose measured error exceeds its budget (the manifest marks it over_budget) "
                   "instead of failing the export.")
@click.option("--ops", type=click.Choice(OPS), default="standard", show_default=True,
              help="How attention, RMSNorm and rotary are lowered: standard opset-23 ops (Attention, "
                   "RMSNormalization, RotaryEmbedding), ONNX Runtime contrib ops (ort), or basic ops only "
                   "(plain, what TensorRT accepts).")
@click.option("--full-attention", "full_attention", type=click.Choice(FULL_ATTENTION), default="auto",
              show_default=True,
              help="How full and cross attention (not the sliding layers) is lowered: chunked = queries in "
                   "blocks against all keys (an ONNX Scan; memory O(block x keys), no score matrix), fused = "
                   "the --ops form (Attention, MultiHeadAttention, or MatMul/Softmax). auto = fused for unmasked "
                   "attention in the fp16 graphs of --target gpu (CUDA's Flash kernel; the Attention op then "
                   "runs in fp16); elsewhere chunked where ONNX Runtime's CPU kernel for the --ops form would "
                   "build the full score matrix (standard always; ort with a mask or causal), fused otherwise "
                   "(see kernels/README.md).")
@click.option("--query-block", "query_block", type=click.IntRange(min=1), default=None,
              help="Queries per step of the chunked attention [default: 64]. Smaller uses less memory "
                   "(about batch x heads x block x keys x 4 bytes per step), larger fewer steps.")
@click.option("--graphs", "graphs", multiple=True, type=click.Choice(GRAPHS),
              help="Export only these graphs (repeat the option). Default: all seven. A partial bundle "
                   "is for development; the runtime needs every graph its tasks use.")
@click.option("--adapter-targets", "adapter_targets", type=click.Choice(["attention", "attention+mlp", "none"]),
              default="attention", show_default=True,
              help="Which DiT linears take LoRA/LoKr adapters at render time (factor inputs of the dit graph): "
                   "attention = self/cross-attention q/k/v/o (the official trainer's targets), attention+mlp "
                   "adds gate/up/down (costs every step, adapter or not), none = no adapter inputs.")
@click.option("--skip-parity", is_flag=True,
              help="Do not run the ONNX Runtime vs torch fp32 check (it needs the torch graph and the "
                   "ONNX session in memory one after the other).")
def export_command(checkpoint, out, layout, precision, graph_precision, target, allow_over_budget, ops,
                   full_attention, query_block, graphs, adapter_targets, skip_parity):
    """Export an ACE-Step checkpoint to an ONNX bundle (see docs/bundle-format.md).

    Example: acestep-edge export --checkpoint ./checkpoints --out ./acestep-xl-fp32
    """
    try:
        from acestep_edge.export.bundle import export_bundle
        from acestep_edge.export.manifest import invoked_command
    except ImportError as exc:
        raise click.ClickException(
            f"export needs the [export] extra ({exc.name or exc} is missing): pip install 'acestep-edge[export]'"
        ) from exc
    from acestep_edge.export.onnx_export import ExportError
    from acestep_edge.models.checkpoint import CheckpointError

    if query_block is not None and (full_attention == "fused" or (full_attention == "auto" and ops == "plain")):
        raise click.BadParameter(f"--query-block sets the chunked lowering, which --full-attention {full_attention} "
                                 f"with --ops {ops} never uses (drop it, or pass --full-attention chunked)",
                                 param_hint="--query-block")
    from acestep_edge.export.precision import parse_graph_precision, plan

    try:
        overrides = parse_graph_precision(graph_precision)
        plan(precision, overrides, [g for g in GRAPHS if not graphs or g in graphs])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--graph-precision") from exc
    try:
        path = export_bundle(checkpoint, out, layout=layout, precision=precision, graph_precision=overrides,
                             target=target, allow_over_budget=allow_over_budget, ops=ops,
                             full_attention=full_attention, query_block=query_block, graphs=graphs or None,
                             parity=not skip_parity, adapter_targets=adapter_targets, command=invoked_command(),
                             log=_log)
    except (CheckpointError, ExportError, ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    from acestep_edge.export.inspect import inspect_bundle

    click.echo(inspect_bundle(path))


@click.command("inspect")
@click.argument("bundle", type=click.Path())
@click.option("--verify", is_flag=True,
              help="Also check that every file is present and matches its sha256 (reads every byte).")
def inspect_command(bundle, verify):
    """Summarise a bundle: model, graphs, sizes, precisions, IO and export-time parity."""
    from acestep_edge.export.inspect import BundleError, inspect_bundle

    try:
        click.echo(inspect_bundle(bundle, verify=verify))
    except BundleError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
