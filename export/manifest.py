"""The bundle's manifest.json (docs/bundle-format.md): graph entries, small files, model and export records."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from acestep_edge.export.inspect import FORMAT, FORMAT_VERSION, sha256_file
from acestep_edge.export.onnx_export import OPSET
from acestep_edge.models.config import PRESETS
from acestep_edge.runtime.postprocess import exact_tile_overlap

SAMPLER_DEFAULTS = {
    "steps": 50, "shift": 3.0, "guidance": "apg", "cfg_scale": 7.0,
    "apg": {"momentum": -0.75, "norm_threshold": 2.5, "eta": 0.0},
    "chunk_mask": 1.0, "vae_chunk": 512,
}  # + vae_overlap, the VAE decoder's exact context (runtime/postprocess.py exact_tile_overlap)


def graph_entry(spec, path: Path, data: Path | None, precision: str, ops: str | None, attention: dict,
                scheme: dict | None) -> dict:
    """One graph's manifest entry (files, hashes, sizes, precision, lowering, IO); parity is added later."""
    entry = {"file": path.name, "sha256": sha256_file(path), "data": data.name if data else None,
             "data_sha256": sha256_file(data) if data else None, "bytes": path.stat().st_size,
             "data_bytes": data.stat().st_size if data else 0, "precision": precision, "opset": OPSET,
             "ops": ops or "eager", "attention": attention, "inputs": [i.to_dict() for i in spec.inputs],
             "outputs": [o.to_dict() for o in spec.outputs]}
    if scheme is not None:
        entry["quantization"] = scheme
    return entry


def write_files(ck, null_emb: np.ndarray, tmp: Path) -> dict:
    """Write tokenizer.json, silence_latent.npy and null_condition_emb.npy; their manifest `files` record."""
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


def build_manifest(preset, graphs: dict, files: dict, root: Path, layout: str) -> dict:
    """The whole manifest but the export command (set by the caller, which knows how it was invoked)."""
    import onnx
    import torch

    from acestep_edge import __version__

    vae = preset.vae
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"variant": _variant(preset), "dit": preset.dit.to_dict(), "text_encoder": preset.text.to_dict(),
                  "vae": vae.to_dict()},
        "audio": {"sample_rate": vae.sampling_rate, "channels": vae.audio_channels, "hop_length": vae.hop_length,
                  "latent_rate": vae.sampling_rate // vae.hop_length, "latent_channels": vae.decoder_input_channels},
        "sampler_defaults": {**json.loads(json.dumps(SAMPLER_DEFAULTS)),
                             "vae_overlap": exact_tile_overlap(vae.downsampling_ratios)},
        "graphs": graphs,
        "files": files,
        "export": {"acestep_edge": __version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
                   "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "checkpoint": str(root), "layout": layout, "command": None},
    }


def default_command(checkpoint, out, layout, precision, ops, overrides=None, target="cpu",
                    full_attention="auto", query_block=None, adapter_targets="attention", sliding_attention="auto",
                    mlp_chunk=None) -> str:
    """The `acestep-edge export` command line equivalent to an `export_bundle` call."""
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
    if full_attention != "auto":
        parts += ["--full-attention", full_attention]
    if query_block is not None:
        parts += ["--query-block", str(query_block)]
    if sliding_attention != "auto":
        parts += ["--sliding-attention", sliding_attention]
    if mlp_chunk is not None:
        parts += ["--mlp-chunk", str(mlp_chunk)]
    if adapter_targets != "attention":
        parts += ["--adapter-targets", adapter_targets]
    return " ".join(parts)


def invoked_command() -> str:
    """The command line that started this process, for the manifest."""
    return " ".join(["acestep-edge"] + sys.argv[1:]) if sys.argv else "acestep-edge export"
