"""Write a bundle directory (docs/bundle-format.md) atomically: graphs, manifest, tokenizer and small arrays."""

from __future__ import annotations

import gc
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from acestep_edge.export import low_memory
from acestep_edge.export import parity as parity_mod
from acestep_edge.export.graphs import GRAPH_NAMES, graph_specs
from acestep_edge.export.manifest import build_manifest, default_command, graph_entry, write_files
from acestep_edge.export.onnx_export import ExportError, attention_record, export_program, save_program
from acestep_edge.export.precision import apply_precision, budget_for, parse_graph_precision, plan
from acestep_edge.export.token_chunks import chunk_record
from acestep_edge.export.vae_layout import conv1d_as_conv2d, fold_weight_norm
from acestep_edge.kernels.lowering import (DEFAULT_QUERY_BLOCK, check_full_attention, check_mlp_chunk,
                                           check_sliding_attention, default_mlp_chunk, flash_target)
from acestep_edge.models.checkpoint import load_checkpoint

# Which load_checkpoint component each group of graphs needs; loaded one at a time to bound memory.
_COMPONENT_ORDER = ("text", "vae", "acestep")


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    *,
    layout: str = "auto",
    precision: str = "fp32",
    graph_precision: str | dict | None = None,
    target: str = "cpu",
    allow_over_budget: bool = False,
    ops: str | None = None,
    full_attention: str = "auto",
    query_block: int | None = None,
    sliding_attention: str = "auto",
    mlp_chunk: int | None = None,
    graphs: Iterable[str] | None = None,
    parity: bool = True,
    adapter_targets: str = "attention",
    command: str | None = None,
    checkpoint_label: str | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Export `checkpoint` to the bundle directory `out`; returns its path.

    Everything is written to `<out>.tmp-<pid>` and renamed into place at the end, so an
    interrupted export never leaves a half bundle at `out`. `precision` is the bundle default,
    `graph_precision` per-graph overrides ("vae_decoder=fp16,..." or a dict), `target` the provider the
    int8/int4 schemes are chosen for (cpu or gpu). A graph whose measured error exceeds its budget
    fails the export unless `allow_over_budget` (then its manifest entry says so). `ops`,
    `full_attention`, `query_block`, `sliding_attention` and `mlp_chunk` choose the kernels' ONNX lowering
    (kernels/lowering.py; ops None traces the eager torch code); each graph's manifest entry records
    what it got (`attention`, `mlp`).
    `adapter_targets` (none, attention, attention+mlp) chooses the DiT's LoRA side-path inputs
    (export/adapter_paths.py).
    """
    out = Path(out)
    names = _check_graphs(graphs)
    overrides = parse_graph_precision(graph_precision) if isinstance(graph_precision, str) or graph_precision is None \
        else dict(graph_precision)
    graph_plan = plan(precision, overrides, names)
    if target not in ("cpu", "gpu"):
        raise ValueError(f"target must be cpu or gpu, got {target!r}")
    check_full_attention(full_attention, DEFAULT_QUERY_BLOCK if query_block is None else query_block)
    check_sliding_attention(sliding_attention)
    if mlp_chunk is not None:
        check_mlp_chunk(mlp_chunk)
    _check_out(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        job_args = dict(precision=precision, plan=graph_plan, target=target, allow_over_budget=allow_over_budget,
                        ops=ops, full_attention=full_attention, query_block=query_block, parity=parity, log=log,
                        adapter_targets=adapter_targets, sliding_attention=sliding_attention, mlp_chunk=mlp_chunk)
        manifest = _write_contents(Path(checkpoint), tmp, layout, job_args, names)
        manifest["export"]["command"] = command or default_command(checkpoint, out, layout, precision, ops,
                                                                   overrides, target, full_attention, query_block,
                                                                   adapter_targets, sliding_attention, mlp_chunk)
        if checkpoint_label:
            manifest["export"]["checkpoint"] = checkpoint_label
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_graphs(graphs) -> list[str]:
    if graphs is None:
        return list(GRAPH_NAMES)
    names = list(dict.fromkeys(graphs))
    unknown = [g for g in names if g not in GRAPH_NAMES]
    if unknown:
        raise ValueError(f"unknown graph(s) {', '.join(unknown)}; choose from {', '.join(GRAPH_NAMES)}")
    if not names:
        raise ValueError("no graphs selected")
    return [g for g in GRAPH_NAMES if g in names]


def _check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and ((out / "manifest.json").exists() or not any(out.iterdir()))):
        raise FileExistsError(f"{out} exists and is not a bundle; choose another --out or remove it")


def _replace(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_contents(root: Path, tmp: Path, layout, job_args: dict, names) -> dict:
    first = load_checkpoint(root, layout, torch.float32, components=())
    preset = first.preset
    specs = graph_specs(preset, job_args["adapter_targets"])
    job = _Job(preset, tmp, **job_args)
    graphs: dict[str, dict] = {}
    null_emb = None
    needed = {specs[n].component for n in names} | {"acestep"}  # acestep also holds null_condition_emb
    for component in _COMPONENT_ORDER:
        if component not in needed:
            continue
        todo = [specs[n] for n in names if specs[n].component == component]
        if component == "acestep" and low_memory.needs_low_memory(preset):
            null_emb = low_memory.export_acestep(root, layout, todo, graphs, job, _export_one)
            continue
        job.log(f"loading {component} weights from {root}")
        ck = load_checkpoint(root, layout, torch.float32, components=(component,))
        if component == "acestep":
            null_emb = ck.acestep.null_condition_emb.detach().float().reshape(-1).numpy()
        for spec in todo:
            graphs[spec.name] = _export_one(spec, spec.build(ck), job)
        del ck
        gc.collect()
    files = write_files(first, null_emb, tmp)
    ordered = {n: graphs[n] for n in names}  # contract order, whatever order the weights were loaded in
    manifest = build_manifest(preset, ordered, files, root, first.layout)
    manifest["export"].update(precision=job.precision, target=job.target, adapter_targets=job.adapter_targets)
    if job.allow_over_budget:
        manifest["export"]["allow_over_budget"] = True
    return manifest


@dataclass(frozen=True)
class _Job:
    preset: object
    tmp: Path
    precision: str  # the bundle default
    plan: dict  # graph → precision
    target: str
    allow_over_budget: bool
    ops: str | None
    full_attention: str
    query_block: int | None
    parity: bool
    log: Callable[[str], None]
    adapter_targets: str = "attention"
    sliding_attention: str = "auto"
    mlp_chunk: int | None = None  # None: kernels.lowering.default_mlp_chunk for the graph's target

    def mlp_chunk_for(self, precision: str) -> int:
        if self.mlp_chunk is not None:
            return self.mlp_chunk
        return default_mlp_chunk(flash_target(self.target, precision))


def _export_one(spec, module, job: _Job, lazy: tuple | None = None) -> dict:
    """Export, save and (optionally) check one graph. `lazy` = (meta model, TensorSource, sub-module
    attribute) when `module` lives on the meta device (export/low_memory.py)."""
    precision = job.plan[spec.name]
    job.log(f"exporting {spec.name} (precision {precision}, ops {job.ops or 'eager'}"
            f"{', traced on meta' if lazy else ''})")
    if lazy is None:
        program = export_program(spec, module, job.preset, job.ops, full_attention=job.full_attention,
                                 query_block=job.query_block, sliding_attention=job.sliding_attention,
                                 mlp_chunk=job.mlp_chunk_for(precision), flash=flash_target(job.target, precision))
    else:
        program = low_memory.trace_on_meta(spec, module, job, lazy)
    attention = attention_record(program.model)
    if spec.name == "vae_decoder":  # CPU convolution layout (export/vae_layout.py); same maths, faster kernels
        fold_weight_norm(program.model)
        conv1d_as_conv2d(program.model)
    scheme = apply_precision(spec.name, precision, program.model, job.target)
    path = job.tmp / f"{spec.name}.onnx"
    data = save_program(program, path)
    mlp = chunk_record(program.model)
    del program
    entry = graph_entry(spec, path, data, precision, job.ops, attention, scheme)
    entry["mlp"] = mlp
    if spec.name == "dit":  # LoRA side-path inputs (export/adapter_paths.py; docs/bundle-format.md)
        entry["adapter_targets"] = [i.name[len("lora_a."):] for i in spec.inputs if i.name.startswith("lora_a.")]
    entry["parity"] = _parity(spec, module, path, entry["data_bytes"], job, lazy) if job.parity else None
    entry["budget"] = {"max_rel_err": budget_for(spec.name, precision)}
    _check_budget(spec.name, precision, entry, job)
    return entry


def _check_budget(name: str, precision: str, entry: dict, job: _Job) -> None:
    """Fail (or, with allow_over_budget, mark) a graph whose measured error exceeds its budget."""
    par = entry.get("parity")
    if not par or "max_rel_err" not in par:
        return  # not measured: the manifest says so in `parity`
    budget = entry["budget"]["max_rel_err"]
    err = par["max_rel_err"]
    if err <= budget:
        return
    msg = (f"graph {name!r} in {precision}: measured max rel err {err:.3g} against torch fp32 exceeds its "
           f"budget {budget:.3g}")
    if not job.allow_over_budget:
        raise ExportError(f"{msg}; {_over_budget_hint(name, precision)}")
    job.log(f"  WARNING: {msg} (kept: --allow-over-budget)")
    entry["over_budget"] = True


def _over_budget_hint(name: str, precision: str) -> str:
    """What the user can do: a higher precision where one exists; fp32 is already the highest."""
    if precision != "fp32":
        return (f"export it in a higher precision (--graph-precision {name}=fp32) or pass --allow-over-budget "
                f"to keep it")
    return ("fp32 is already the highest precision, so this is ONNX Runtime's fp32 rounding against torch's, "
            "grown through the graph: check the checkpoint's weights (a fine-tune with extreme values can "
            "amplify it) and pass --allow-over-budget to keep the graph; the manifest records the measured error")


def _parity(spec, module, path: Path, data_bytes: int, job: _Job, lazy) -> dict:
    job.log(f"parity of {spec.name}: onnxruntime CPU vs torch fp32")
    cases = parity_mod.parity_cases(spec, job.preset)
    inputs = parity_mod.case_inputs(spec, job.preset, cases)
    if lazy is None:
        refs = parity_mod.torch_references(module, inputs)
    else:
        refs, reason = low_memory.streamed_references(module, inputs, lazy, data_bytes)
        if reason:
            job.log(f"  parity skipped: {reason}")
            return {"reference": "torch fp32", "runtime": "onnxruntime CPU", "skipped": reason}
    del module
    gc.collect()  # free the torch copy before ONNX Runtime loads its own
    result = parity_mod.compare(spec, cases, refs, parity_mod.ort_outputs(path, spec, inputs))
    job.log(f"  max rel err {result['max_rel_err']:.3g}")
    return result
