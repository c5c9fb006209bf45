"""Read and verify a bundle without torch or onnx: a readable summary and full sha256 checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

# The runtime owns the bundle contract (it is the base install); inspect reads manifests through it.
from acestep_edge.runtime.bundle import BUNDLE_FORMAT as FORMAT
from acestep_edge.runtime.bundle import BUNDLE_VERSION as FORMAT_VERSION
from acestep_edge.runtime.bundle import BundleError, read_manifest  # noqa: F401 - part of this module's API
from acestep_edge.runtime.bundle import fix_hint as _fix


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _listed_files(manifest: dict) -> list[tuple[str, str, str | None]]:
    """(what, file name, expected sha256) for every file the manifest lists."""
    out = []
    for name, g in manifest.get("graphs", {}).items():
        out.append((f"graph {name!r}", g.get("file"), g.get("sha256")))
        if g.get("data"):
            out.append((f"external data of graph {name!r}", g["data"], g.get("data_sha256")))
    for key, entry in manifest.get("files", {}).items():
        out.append((key, entry.get("file"), entry.get("sha256")))
    return out


def verify_bundle(path: str | Path) -> dict:
    """Check format/version, presence of every file and the sha256 of each; returns the manifest.

    Raises BundleError at the first problem, naming the file and the command that regenerates it.
    """
    bundle = Path(path)
    manifest = read_manifest(bundle)
    fix = _fix(bundle, manifest)
    if not manifest.get("graphs"):
        raise BundleError(f"{bundle / 'manifest.json'} lists no graphs; {fix}")
    listed = _listed_files(manifest)
    for what, name, _ in listed:
        if not name or not (bundle / name).is_file():
            raise BundleError(f"{bundle / (name or '?')} ({what}) is missing; {fix}")
    for what, name, want in listed:
        if not want:
            raise BundleError(f"manifest gives no sha256 for {name} ({what}); {fix}")
        got = sha256_file(bundle / name)
        if got != want:
            raise BundleError(
                f"{bundle / name} ({what}) is damaged: sha256 {got[:16]}… does not match the manifest's "
                f"{want[:16]}… (truncated or altered file); {fix}"
            )
    return manifest


def _size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _io(items) -> str:
    return ", ".join(f"{i['name']} {i['dtype']}[{', '.join(str(d) for d in i['shape'])}]" for i in items)


def scheme_text(graph: dict) -> str:
    """One line for a graph's precision scheme (the manifest's `quantization` record; fp32 has none)."""
    q = graph.get("quantization")
    if not q:
        return "fp32 (no rewrite)" if graph.get("precision", "fp32") == "fp32" else f"{graph.get('precision')}"
    if q.get("bits") == 16:
        return f"fp16 weights and matmuls/convolutions ({q.get('rewritten_ops')} ops), fp32 elsewhere"
    parts = [q.get("op", "?"), f"{q.get('bits')}-bit",
             f"block {q['block_size']}" if q.get("block_size") else "per output channel",
             "symmetric" if q.get("symmetric") else "asymmetric"]
    if q.get("accuracy_level"):
        parts.append(f"accuracy level {q['accuracy_level']}")
    if q.get("weight_dtype") and "Dynamic" in q.get("op", ""):
        parts.append(f"{q['weight_dtype']} weights" + (", reduce range" if q.get("reduce_range") else ""))
    parts.append(f"for {q.get('provider')}")
    if q.get("rewritten_ops") is not None:
        parts.append(f"{q['rewritten_ops']} linears")
    return ", ".join(parts)


def weight_form_lines(graph: dict) -> list[str]:
    """For a DynamicQuantizeMatMul graph: the int8 weight form a session on this CPU runs (runtime/int8_form.py)."""
    q = graph.get("quantization") or {}
    if "DynamicQuantizeMatMul" not in (q.get("op") or ""):
        return []
    from acestep_edge.runtime.cpu_features import cpu_summary, int8_weight_form

    stored = "u8" if q.get("weight_dtype") == "uint8" else "s8"
    try:
        form, why = int8_weight_form(stored)
    except ValueError as exc:  # a bad ACESTEP_EDGE_INT8_WEIGHTS: say so here, sessions refuse it
        form, why = "?", str(exc)
    return [f"    int8 weights on this CPU: {form} (stored {stored}; {why}); CPU: {cpu_summary()}"]


def attention_text(graph: dict) -> str:
    """One line for a graph's attention lowering (the manifest's `attention` record; older bundles lack it)."""
    rec = graph.get("attention")
    if not rec:
        return f"ops {graph.get('ops', '?')}; forms not recorded (exported before per-graph attention records)"
    if rec.get("ops") == "eager":
        return "ops eager (traced from the torch code, no lowering)"
    full = rec.get("full")
    parts = [f"ops {rec.get('ops')}",
             "no full/cross attention" if not full else
             f"full/cross {full}" + (f" (query block {rec['query_block']})" if rec.get("query_block") else ""),
             f"sliding {rec['sliding']}" if rec.get("sliding") else "no sliding-window attention"]
    if rec.get("requested"):
        parts.append(f"--full-attention {rec['requested']}")
    return ", ".join(parts)


def inspect_bundle(path: str | Path, verify: bool = False) -> str:
    """A readable summary: model, graphs (sizes, precision, ops, IO, parity) and files."""
    bundle = Path(path)
    manifest = verify_bundle(bundle) if verify else read_manifest(bundle)
    model, audio, export = manifest.get("model", {}), manifest.get("audio", {}), manifest.get("export", {})
    dit = model.get("dit", {})
    lines = [
        f"bundle {bundle}  ({manifest['format']} v{manifest['format_version']})",
        f"model: {model.get('variant', '?')}  DiT {dit.get('num_hidden_layers', '?')} layers × "
        f"{dit.get('hidden_size', '?')}, encoder {dit.get('encoder_hidden_size', '?')}, "
        f"window ±{dit.get('sliding_window', '?')}",
        f"audio: {audio.get('sample_rate')} Hz, {audio.get('channels')} ch, hop {audio.get('hop_length')}, "
        f"{audio.get('latent_channels')} latent channels at {audio.get('latent_rate')} Hz",
        f"exported: {export.get('created', '?')} with torch {export.get('torch', '?')}, onnx {export.get('onnx', '?')}"
        f" from {export.get('checkpoint', '?')} ({export.get('layout', '?')})",
        "graphs:",
    ]
    total = 0
    for name, g in manifest.get("graphs", {}).items():
        size = (g.get("bytes") or 0) + (g.get("data_bytes") or 0)
        total += size
        par = g.get("parity")
        if par and "skipped" in par:
            par_txt = f"parity skipped ({par['skipped']})"
        elif par:
            par_txt = f"parity max rel err {par['max_rel_err']:.2e} ({len(par.get('cases', []))} cases)"
        else:
            par_txt = "parity not measured"
        if g.get("budget") and par and "max_rel_err" in par:
            par_txt += f", budget {g['budget']['max_rel_err']:.2e}" + ("  OVER BUDGET" if g.get("over_budget") else "")
        data = f" + {g['data']}" if g.get("data") else ""
        lines += [
            f"  {name}: {g.get('file')}{data}  {_size(size)}  {g.get('precision')}  opset {g.get('opset')}  "
            f"ops {g.get('ops')}  {par_txt}",
            f"    scheme: {scheme_text(g)}",
            *weight_form_lines(g),
            f"    attention: {attention_text(g)}",
            f"    in:  {_io(g.get('inputs', []))}",
            f"    out: {_io(g.get('outputs', []))}",
        ]
    lines.append("files:")
    for key, entry in manifest.get("files", {}).items():
        f = bundle / entry.get("file", "")
        size = f.stat().st_size if f.is_file() else None
        lines.append(f"  {key}: {entry.get('file')}  {_size(size) if size is not None else 'MISSING'}")
    lines.append(f"total graph size: {_size(total)}")
    if export.get("precision"):
        lines.append(f"precision: {export['precision']} (schemes chosen for {export.get('target', 'cpu')})"
                     + ("; exported with --allow-over-budget" if export.get("allow_over_budget") else ""))
    lines.append("verified: every file present and its sha256 matches" if verify else
                 "not verified (run with --verify to check every file's sha256)")
    return "\n".join(lines)
