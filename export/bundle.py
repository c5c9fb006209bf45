"""Write a bundle directory (docs/bundle-format.md) atomically: graphs, manifest, tokenizer and small arrays."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable

import numpy as np
import torch

from acestep_edge.export import parity as parity_mod
from acestep_edge.export.graphs import GRAPH_NAMES, example_sizes, graph_specs
from acestep_edge.export.inspect import FORMAT, FORMAT_VERSION, sha256_file
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
from acestep_edge.export.onnx_export import OPSET, ExportError, export_program, save_program
from acestep_edge.export.precision import apply_precision, budget_for, parse_graph_precision, plan
from acestep_edge.models.checkpoint import load_checkpoint
from acestep_edge.models.config import PRESETS

SAMPLER_DEFAULTS = {
    "steps": 50, "shift": 3.0, "guidance": "apg", "cfg_scale": 7.0,
    "apg": {"momentum": -0.75, "norm_threshold": 2.5, "eta": 0.0},
    "chunk_mask": 1.0, "vae_chunk": 512, "vae_overlap": 64,
}
# Which load_checkpoint component each group of graphs needs; loaded one at a time to bound memory.
_COMPONENT_ORDER = ("text", "vae", "acestep")
# An ACE-Step model over this in fp32 (XL: 20 GB) takes the low-memory path, one sub-module at a time;
# a sub-module over it (XL DiT: 16.7 GB) is traced on the meta device. Tiny and the 2B model load normally.
LOW_MEMORY_BYTES = 4 * 2**30
# Peak ONNX Runtime CPU memory per byte of fp32 weights, measured on the XL DiT (benchmarks/RESULTS.md).
ORT_MEMORY_FACTOR = 1.1
_SUBMODULE = {"condition_encoder": "encoder", "dit": "decoder", "audio_tokenizer": "tokenizer",
              "audio_detokenizer": "detokenizer"}


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
    fails the export unless `allow_over_budget` (then its manifest entry says so). `adapter_targets`
    (none, attention, attention+mlp) chooses the DiT's LoRA side-path inputs (export/adapter_paths.py).
    """
    out = Path(out)
    names = _check_graphs(graphs)
    overrides = parse_graph_precision(graph_precision) if isinstance(graph_precision, str) or graph_precision is None \
        else dict(graph_precision)
    graph_plan = plan(precision, overrides, names)
    if target not in ("cpu", "gpu"):
        raise ValueError(f"target must be cpu or gpu, got {target!r}")
    _check_out(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        job_args = dict(precision=precision, plan=graph_plan, target=target, allow_over_budget=allow_over_budget,
                        adapter_targets=adapter_targets)
        manifest = _write_contents(Path(checkpoint), tmp, layout, job_args, ops, names, parity, log)
        manifest["export"]["command"] = command or _default_command(checkpoint, out, layout, precision, ops,
                                                                    overrides, target, adapter_targets)
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


def _write_contents(root: Path, tmp: Path, layout, job_args: dict, ops, names, parity, log) -> dict:
    first = load_checkpoint(root, layout, torch.float32, components=())
    preset = first.preset
    specs = graph_specs(preset, job_args["adapter_targets"])
    job = _Job(preset, tmp, ops=ops, parity=parity, log=log, **job_args)
    graphs: dict[str, dict] = {}
    null_emb = None
    needed = {specs[n].component for n in names} | {"acestep"}  # acestep also holds null_condition_emb
    for component in _COMPONENT_ORDER:
        if component not in needed:
            continue
        todo = [specs[n] for n in names if specs[n].component == component]
        if component == "acestep" and fp32_bytes(meta_acestep(preset.dit)) > LOW_MEMORY_BYTES:
            null_emb = _export_acestep_low_memory(root, layout, todo, graphs, job)
            continue
        log(f"loading {component} weights from {root}")
        ck = load_checkpoint(root, layout, torch.float32, components=(component,))
        if component == "acestep":
            null_emb = ck.acestep.null_condition_emb.detach().float().reshape(-1).numpy()
        for spec in todo:
            graphs[spec.name] = _export_one(spec, spec.build(ck), job)
        del ck
        gc.collect()
    files = _write_files(first, null_emb, tmp)
    ordered = {n: graphs[n] for n in names}  # contract order, whatever order the weights were loaded in
    manifest = _manifest(preset, ordered, files, root, first.layout)
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
    parity: bool
    log: Callable[[str], None]
    adapter_targets: str = "attention"


def _export_acestep_low_memory(root: Path, layout: str, todo, graphs: dict, job: _Job) -> np.ndarray:
    """Export the ACE-Step graphs one sub-module at a time; returns null_condition_emb.

    The model is built on the meta device. A sub-module up to LOW_MEMORY_BYTES in fp32 (XL: condition
    encoder 2.4 GB, tokenizer/detokenizer 0.4 GB) is materialised alone, exported and sent back to meta;
    a larger one (XL DiT: 16.7 GB) is traced on meta and its weights streamed from the checkpoint.
    """
    job.log(f"low-memory export of the ACE-Step graphs from {root} (fp32 weights over {LOW_MEMORY_BYTES / 2**30:.0f} GiB)")
    source = TensorSource(root, layout)
    model = meta_acestep(job.preset.dit)
    null_emb = source.load("null_condition_emb").reshape(-1).numpy()
    holder = SimpleNamespace(acestep=model)
    for spec in todo:
        attr = _SUBMODULE[spec.name]
        sub = getattr(model, attr)
        if fp32_bytes(sub) > LOW_MEMORY_BYTES:
            graphs[spec.name] = _export_one(spec, spec.build(holder), job, lazy=(model, source, attr))
            continue
        materialize(sub, attr + ".", source)
        try:
            graphs[spec.name] = _export_one(spec, spec.build(holder), job)
        finally:
            release(sub)
            gc.collect()
    return null_emb


def _export_one(spec, module, job: _Job, lazy: tuple | None = None) -> dict:
    """Export, save and (optionally) check one graph. `lazy` = (meta model, TensorSource, sub-module
    attribute) when `module` lives on the meta device: traced with meta inputs, weights streamed at save."""
    precision = job.plan[spec.name]
    job.log(f"exporting {spec.name} (precision {precision}, ops {job.ops or 'eager'}"
            f"{', traced on meta' if lazy else ''})")
    if lazy is None:
        program = export_program(spec, module, job.preset, job.ops)
    else:
        model, source, _ = lazy
        example = spec.example(example_sizes(), job.preset, torch.Generator().manual_seed(0))
        # optimize=False: the optimizer's constant folding would need the weights' values.
        program = export_program(spec, module, job.preset, job.ops, args=tuple(a.to("meta") for a in example),
                                 optimize=False)
        attach_lazy_weights(program.model, wrapper_names(module, model), source)
    scheme = apply_precision(spec.name, precision, program.model, job.target)
    path = job.tmp / f"{spec.name}.onnx"
    data = save_program(program, path)
    del program
    entry = {"file": path.name, "sha256": sha256_file(path), "data": data.name if data else None,
             "data_sha256": sha256_file(data) if data else None, "bytes": path.stat().st_size,
             "data_bytes": data.stat().st_size if data else 0, "precision": precision, "opset": OPSET,
             "ops": job.ops or "eager", "inputs": [i.to_dict() for i in spec.inputs],
             "outputs": [o.to_dict() for o in spec.outputs]}
    if scheme is not None:
        entry["quantization"] = scheme
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
        raise ExportError(f"{msg}; export it in a higher precision (--graph-precision {name}=fp32) or pass "
                          f"--allow-over-budget to keep it")
    job.log(f"  WARNING: {msg} (kept: --allow-over-budget)")
    entry["over_budget"] = True


def _parity(spec, module, path: Path, data_bytes: int, job: _Job, lazy) -> dict:
    job.log(f"parity of {spec.name}: onnxruntime CPU vs torch fp32")
    cases = parity_mod.parity_cases(spec, job.preset)
    inputs = parity_mod.case_inputs(spec, job.preset, cases)
    if lazy is None:
        refs = parity_mod.torch_references(module, inputs)
    else:
        model, source, attr = lazy
        reason = _lazy_parity_blocker(getattr(model, attr), data_bytes)
        if reason:
            job.log(f"  parity skipped: {reason}")
            return {"reference": "torch fp32", "runtime": "onnxruntime CPU", "skipped": reason}
        with streamed(getattr(model, attr), attr + ".", source):  # one DiT layer in memory at a time
            refs = parity_mod.torch_references(module, inputs)
    del module
    gc.collect()  # free the torch copy before ONNX Runtime loads its own
    result = parity_mod.compare(spec, cases, refs, parity_mod.ort_outputs(path, spec, inputs))
    job.log(f"  max rel err {result['max_rel_err']:.3g}")
    return result


def _lazy_parity_blocker(sub, data_bytes: int) -> str | None:
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


def _write_files(ck, null_emb: np.ndarray, tmp: Path) -> dict:
    shutil.copyfile(ck.tokenizer_json, tmp / "tokenizer.json")
    silence = ck.silence_latent.detach().float().numpy()
    if silence.ndim != 3 or silence.shape[0] != 1:
        raise ValueError(f"silence latent must be [1, N, 64], got {silence.shape}")
    np.save(tmp / "silence_latent.npy", np.ascontiguousarray(silence[0], dtype=np.float32))
    np.save(tmp / "null_condition_emb.npy", np.ascontiguousarray(null_emb, dtype=np.float32))
    files = {}
    for key, name in (("tokenizer", "tokenizer.json"), ("silence_latent", "silence_latent.npy"),
                      ("null_condition_emb", "null_condition_emb.npy")):
        files[key] = {"file": name, "sha256": sha256_file(tmp / name)}
    return files


def _variant(preset) -> str:
    for name, factory in PRESETS.items():
        if factory() == preset:
            return name
    return "custom"


def _manifest(preset, graphs: dict, files: dict, root: Path, layout: str) -> dict:
    import onnx

    from acestep_edge import __version__

    vae = preset.vae
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"variant": _variant(preset), "dit": preset.dit.to_dict(), "text_encoder": preset.text.to_dict(),
                  "vae": vae.to_dict()},
        "audio": {"sample_rate": vae.sampling_rate, "channels": vae.audio_channels, "hop_length": vae.hop_length,
                  "latent_rate": vae.sampling_rate // vae.hop_length, "latent_channels": vae.decoder_input_channels},
        "sampler_defaults": json.loads(json.dumps(SAMPLER_DEFAULTS)),
        "graphs": graphs,
        "files": files,
        "export": {"acestep_edge": __version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
                   "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "checkpoint": str(root), "layout": layout, "command": None},
    }


def _default_command(checkpoint, out, layout, precision, ops, overrides=None, target="cpu",
                     adapter_targets="attention") -> str:
    parts = ["acestep-edge", "export", "--checkpoint", str(checkpoint), "--out", str(out)]
    if layout != "auto":
        parts += ["--layout", layout]
    parts += ["--precision", precision]
    if overrides:
        parts += ["--graph-precision", ",".join(f"{g}={p}" for g, p in overrides.items())]
    if target != "cpu":
        parts += ["--target", target]
    if ops:
        parts += ["--ops", ops]
    if adapter_targets != "attention":
        parts += ["--adapter-targets", adapter_targets]
    return " ".join(parts)


def invoked_command() -> str:
    """The command line that started this process, for the manifest."""
    return " ".join(["acestep-edge"] + sys.argv[1:]) if sys.argv else "acestep-edge export"
