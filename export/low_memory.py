"""The XL export path: the ACE-Step graphs one sub-module at a time, the largest traced on the meta device.

An ACE-Step model over LOW_MEMORY_BYTES in fp32 (XL: 20 GB) does not fit beside the exporter on a
24 GB machine. It is built on the meta device; a sub-module up to the threshold (XL condition encoder
2.4 GB, tokenizer/detokenizer 0.4 GB) is materialised alone, exported and sent back to meta; a larger
one (XL DiT: 16.7 GB) is traced on meta and its weights streamed from the checkpoint into the data
file (export/lazy_weights.py). Tiny and the 2B model take the ordinary path in export/bundle.py.
"""

from __future__ import annotations

import gc
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from acestep_edge.export import parity as parity_mod
from acestep_edge.export.graphs import example_sizes
from acestep_edge.export.lazy_weights import (
    TensorSource,
    attach_lazy_weights,
    fp32_bytes,
    materialize,
    meta_acestep,
    release,
    streamed,
    wrapper_names,
)
from acestep_edge.export.onnx_export import export_program
from acestep_edge.kernels.lowering import flash_target

LOW_MEMORY_BYTES = 4 * 2**30
# Peak ONNX Runtime CPU memory per byte of fp32 weights, measured on the XL DiT (benchmarks/RESULTS.md).
ORT_MEMORY_FACTOR = 1.1
_SUBMODULE = {"condition_encoder": "encoder", "dit": "decoder", "audio_tokenizer": "tokenizer",
              "audio_detokenizer": "detokenizer"}


def needs_low_memory(preset) -> bool:
    """Whether the ACE-Step module of `preset` takes this path (its fp32 weights exceed LOW_MEMORY_BYTES)."""
    return fp32_bytes(meta_acestep(preset.dit)) > LOW_MEMORY_BYTES


def export_acestep(root: Path, layout: str, todo, graphs: dict, job, export_one: Callable) -> np.ndarray:
    """Export the ACE-Step graphs in `todo` into `graphs`; returns null_condition_emb.

    `export_one(spec, module, job, lazy=None)` exports one graph; `lazy` = (meta model, TensorSource,
    sub-module attribute) marks a module left on the meta device.
    """
    job.log(f"low-memory export of the ACE-Step graphs from {root} "
            f"(fp32 weights over {LOW_MEMORY_BYTES / 2**30:.0f} GiB)")
    source = TensorSource(root, layout)
    model = meta_acestep(job.preset.dit)
    null_emb = source.load("null_condition_emb").reshape(-1).numpy()
    holder = SimpleNamespace(acestep=model)
    for spec in todo:
        attr = _SUBMODULE[spec.name]
        sub = getattr(model, attr)
        if fp32_bytes(sub) > LOW_MEMORY_BYTES:
            graphs[spec.name] = export_one(spec, spec.build(holder), job, lazy=(model, source, attr))
            continue
        materialize(sub, attr + ".", source)
        try:
            graphs[spec.name] = export_one(spec, spec.build(holder), job)
        finally:
            release(sub)
            gc.collect()
    return null_emb


def trace_on_meta(spec, module, job, lazy: tuple):
    """Trace `module` (on meta) with meta example inputs; its initializers read the checkpoint when saved."""
    model, source, _ = lazy
    example = spec.example(example_sizes(), job.preset, torch.Generator().manual_seed(0))
    # optimize=False: the optimizer's constant folding would need the weights' values.
    program = export_program(spec, module, job.preset, job.ops, args=tuple(a.to("meta") for a in example),
                             optimize=False, full_attention=job.full_attention, query_block=job.query_block,
                             flash=flash_target(job.target, job.plan[spec.name]))
    attach_lazy_weights(program.model, wrapper_names(module, model), source)
    return program


def streamed_references(module, inputs, lazy: tuple, data_bytes: int) -> tuple[list | None, str | None]:
    """(torch references with one DiT layer in memory at a time, None), or (None, why parity cannot run here)."""
    model, source, attr = lazy
    reason = _parity_blocker(getattr(model, attr), data_bytes)
    if reason:
        return None, reason
    with streamed(getattr(model, attr), attr + ".", source):
        return parity_mod.torch_references(module, inputs), None


def _parity_blocker(sub, data_bytes: int) -> str | None:
    """Why parity of a graph exported from meta cannot run here, or None when it can."""
    if not hasattr(sub, "layers"):
        return "no streamed torch reference for this sub-module"
    need = int(data_bytes * ORT_MEMORY_FACTOR)
    avail = _mem_available()
    if avail is not None and need > avail:
        return (f"ONNX Runtime needs ~{need / 1e9:.1f} GB for {data_bytes / 1e9:.1f} GB of fp32 weights, "
                f"{avail / 1e9:.1f} GB available")
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # not Linux: try, and let ONNX Runtime fail loudly if it must
