"""Export one bundle graph to ONNX with torch's dynamo exporter (opset 23) and save it with its external data."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import torch

from acestep_edge.export.graphs import GraphSpec, example_sizes

OPSET = 23
# Graphs whose weights exceed this keep them in `<graph>.onnx.data`; smaller ones stay in one file.
EXTERNAL_DATA_THRESHOLD = 2 * 1024 * 1024
# Tensors smaller than this stay inline even in a graph with a data file (shapes, tiny constants).
INLINE_TENSOR_BYTES = 1024


class ExportError(RuntimeError):
    """A graph that could not be exported or saved; the message names the graph and the cause."""


@contextlib.contextmanager
def _lowering(ops: str | None, full_attention: str, query_block: int, flash: bool = False):
    """(custom translation table, {attention kind: forms used}) while tracing under `ops` (None: eager)."""
    if ops is None:
        yield {}, {}
        return
    from acestep_edge.kernels.lowering import translation_table, use_lowering

    with use_lowering(ops, full_attention=full_attention, query_block=query_block, flash=flash) as used:
        yield translation_table(ops, OPSET), used


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter logs a warning per missing torchvision op and prints progress; none of it is ours.
    names = ["torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._core",
             "torch.onnx"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_program(spec: GraphSpec, module: torch.nn.Module, preset, ops: str | None = None,
                   args: tuple | None = None, optimize: bool = True, full_attention: str = "auto",
                   query_block: int | None = None, flash: bool = False):
    """Trace `module` to an ONNXProgram with the contract's IO names and symbolic dims.

    `ops` picks the kernels' ONNX forms (None: trace the eager torch code); `full_attention` ('auto',
    'chunked', 'fused') and `query_block` (default 64) the full/cross attention lowering under it
    (kernels/lowering.py); `flash` tells `auto` the graph's provider has a flash kernel
    (kernels/lowering.py `flash_target`). The choices and the forms the graph ended up with are written into the
    model's metadata (`attention_record` reads them back).
    """
    from acestep_edge.kernels.lowering import DEFAULT_QUERY_BLOCK, check_full_attention

    query_block = DEFAULT_QUERY_BLOCK if query_block is None else query_block
    check_full_attention(full_attention, query_block)
    if args is None:
        args = spec.example(example_sizes(), preset, torch.Generator().manual_seed(0))
    module = module.eval()
    try:
        with _lowering(ops, full_attention, query_block, flash) as (table, used), _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=OPSET, dynamic_shapes=spec.dynamic(),
                input_names=[i.name for i in spec.inputs], output_names=[o.name for o in spec.outputs],
                custom_translation_table=table or None, optimize=optimize, report=False, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "this graph failed"
        raise ExportError(f"exporting graph {spec.name!r} (ops={ops}) failed: {type(exc).__name__}: {exc}") from exc
    rename_dims(program.model, spec)
    if ops is not None:  # the graph says how it was lowered (onnx.load(...).metadata_props)
        program.model.metadata_props.update({
            "acestep.ops": ops, "acestep.full_attention": full_attention, "acestep.query_block": str(query_block),
            "acestep.full_attention_forms": "+".join(sorted(used.get("full", ()))),
            "acestep.sliding_attention_forms": "+".join(sorted(used.get("sliding", ())))})
    return program


def attention_record(model) -> dict:
    """The manifest's per-graph `attention` record, from the metadata `export_program` wrote.

    {"ops", "full" (the form full/cross attention took: chunked, fused, or null when the graph has
    none), "query_block" (chunked only), "sliding" (blocked, or null), "requested" (--full-attention)}.
    """
    meta = model.metadata_props
    if "acestep.ops" not in meta:
        return {"ops": "eager", "full": None, "query_block": None, "sliding": None, "requested": None}
    full = meta.get("acestep.full_attention_forms") or None
    return {"ops": meta["acestep.ops"], "full": full,
            "query_block": int(meta["acestep.query_block"]) if full and "chunked" in full else None,
            "sliding": meta.get("acestep.sliding_attention_forms") or None,
            "requested": meta["acestep.full_attention"]}


def rename_dims(model, spec: GraphSpec) -> None:
    """Give the graph's inputs and outputs the contract's symbolic dim names (e.g. 's46' → 'N/1920')."""
    import onnx_ir as ir

    for values, io in ((model.graph.inputs, spec.inputs), (model.graph.outputs, spec.outputs)):
        if [v.name for v in values] != [i.name for i in io]:
            raise ExportError(f"graph {spec.name!r} has IO {[v.name for v in values]}, expected {[i.name for i in io]}")
        for value, want in zip(values, io):
            have = value.shape
            if have is None or len(have) != len(want.shape):
                raise ExportError(f"graph {spec.name!r}: {want.name} has shape {have}, expected rank {len(want.shape)}")
            for got, dim in zip(have, want.shape):
                if isinstance(dim, int) and isinstance(got, int) and got != dim:
                    raise ExportError(f"graph {spec.name!r}: {want.name} has shape {have}, expected {want.shape}")
                if isinstance(dim, str) and isinstance(got, int):
                    # Renaming would hide it: the graph would only run at the traced size.
                    raise ExportError(f"graph {spec.name!r}: the exporter fixed dim {dim!r} of {want.name} to {got}; "
                                      "trace with larger example sizes (export/graphs.py example_sizes)")
            value.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in want.shape])


def initializer_bytes(model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            total += tensor.nbytes
    return total


def save_program(program, path: str | Path) -> Path | None:
    """Save to `path`; weights go to `<path>.data` when they exceed the threshold. Returns the data path."""
    import onnx
    import onnx_ir as ir

    path = Path(path)
    data = None
    if initializer_bytes(program.model) > EXTERNAL_DATA_THRESHOLD:
        data = path.with_name(path.name + ".data")
        # onnx_ir streams tensors to one file and never builds a >2 GB protobuf (XL's DiT is 16 GB in fp32).
        ir.save(program.model, path, external_data=data.name, size_threshold_bytes=INLINE_TENSOR_BYTES)
    else:
        ir.save(program.model, path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"{path.name} fails the ONNX checker: {exc}") from exc
    return data
