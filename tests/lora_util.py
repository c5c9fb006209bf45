"""Adapters made by the real libraries (peft, LyCORIS) on a tiny DiT, with seeded random non-zero factors,
and renamed copies in the ComfyUI and diffusers conventions. Imported by the adapter tests only."""

from __future__ import annotations

import json
import shutil
import struct
import uuid
from pathlib import Path

import numpy as np

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
LYRICS = "[Verse]\nthread by thread we cross the blue"


def request(seed=5, steps=50, lora=None):
    body = {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "warm analog synth",
            "duration": 10, "steps": steps, "CFGScale": 7.0, "seed": seed,
            "settings": {"lyrics": LYRICS, "bpm": 120, "keyScale": "D minor", "timeSignature": "4/4",
                         "vocalLanguage": "en", "guidanceType": "apg"}}
    if lora is not None:
        body["lora"] = lora
    return body


def reference_params(steps=50):
    from acestep_edge.models.reference import ReferenceParams

    return ReferenceParams(caption="warm analog synth", lyrics=LYRICS, duration=10, steps=steps, cfg_scale=7.0,
                           guidance="apg", bpm=120, key_scale="D minor", time_signature=4, language="en")


def _randomise(params, seed: int, std: float) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def peft_adapter(decoder, out: Path, *, r=4, alpha=8, targets=ATTENTION, seed=1, std=0.15, rslora=False):
    """Inject a peft LoRA into `decoder` (in place), give it random factors, save it as a PEFT folder."""
    from peft import LoraConfig, PeftModel

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora, lora_dropout=0.0)
    model = PeftModel(decoder, config)
    _randomise([p for n, p in model.named_parameters() if "lora_" in n], seed, std)
    model.save_pretrained(str(out))
    return model


def attention_root(decoder):
    """A module holding only the DiT's attention projections under their DiT paths (`layers.N.self_attn.q_proj`),
    so LyCORIS wraps exactly those and names them `lycoris_layers_N_self_attn_q_proj` as the official trainer's."""
    from torch import nn

    root = nn.Module()
    root.layers = nn.ModuleList()
    for layer in decoder.layers:
        holder = nn.Module()
        for block in ("self_attn", "cross_attn"):
            holder.add_module(block, nn.ModuleDict({p: getattr(getattr(layer, block), p) for p in ATTENTION}))
        root.layers.append(holder)
    return root


def lokr_adapter(decoder, out: Path, *, dim=4, alpha=2, factor=4, seed=3, std=0.15, multiplier=1.0):
    """A LyCORIS LoKr network on the DiT's attention projections, random factors, saved as
    `lokr_weights.safetensors`; returns the network (applied to `decoder`)."""
    import torch
    from lycoris import create_lycoris

    network = create_lycoris(attention_root(decoder), multiplier, linear_dim=dim, linear_alpha=alpha, algo="lokr", factor=factor)
    network.apply_to()
    _randomise([p for n, p in network.named_parameters() if "lokr_" in n], seed, std)
    out.mkdir(parents=True, exist_ok=True)
    network.save_weights(str(out / "lokr_weights.safetensors"), torch.float32,
                         {"lokr_config": json.dumps({"linear_dim": dim, "linear_alpha": alpha, "factor": factor}),
                          "trigger_words": "tinytrigger, second"})
    return network


def renamed_copies(peft_dir: Path, out: Path) -> tuple[Path, Path]:
    """The PEFT adapter as a ComfyUI single file (`diffusion_model.`, lora_down/up, per-module alpha) and a
    diffusers-named file (`transformer.`, to_q/to_k/to_v/to_out.0; no alpha, so the scale is folded into B)."""
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    state = load_file(str(peft_dir / "adapter_model.safetensors"))
    comfy, diff = {}, {}
    for key, value in state.items():
        module = key[len("base_model.model."):].rsplit(".lora_", 1)[0]
        is_a = ".lora_A." in key
        r = value.shape[0] if is_a else value.shape[1]
        comfy[f"diffusion_model.{module}.{'lora_down' if is_a else 'lora_up'}.weight"] = value
        # PEFT's scale (alpha/r, or alpha/√r with rsLoRA) as a ComfyUI alpha (read as alpha/r).
        peft_scale = config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
        comfy[f"diffusion_model.{module}.alpha"] = torch.tensor(float(peft_scale * r))
        dname = module
        for old, new in ((".q_proj", ".to_q"), (".k_proj", ".to_k"), (".v_proj", ".to_v"), (".o_proj", ".to_out.0")):
            dname = dname.replace(old, new)
        scale = 1.0 if is_a else peft_scale
        diff[f"transformer.{dname}.{'lora_A' if is_a else 'lora_B'}.weight"] = (value * scale).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(comfy, str(out / "comfy.safetensors"))
    save_file(diff, str(out / "diffusers.safetensors"))
    return out / "comfy.safetensors", out / "diffusers.safetensors"


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None, dtype: str = "F32") -> Path:
    """The safetensors layout (u64 header length, JSON header, raw little-endian data) written without the
    safetensors package, so torch-free and server-only tests can make adapter files."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.asarray(array, np.float32)
        if dtype == "BF16":
            data = (array.view(np.uint32) >> 16).astype("<u2").tobytes()
        elif dtype == "F16":
            data = array.astype("<f2").tobytes()
        else:
            data = array.astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return path


def with_dit_of(base: Path, dit_bundle: Path, out: Path) -> Path:
    """The fp32 bundle with its DiT replaced by `dit_bundle`'s: what `--precision int8|int4` writes, since
    those precisions leave every other graph fp32 (exporting only the DiT keeps the tests quick)."""
    shutil.copytree(base, out)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = json.loads((dit_bundle / "manifest.json").read_text())["graphs"]["dit"]
    for key in ("file", "data"):
        if entry.get(key):
            shutil.copyfile(dit_bundle / entry[key], out / entry[key])
    manifest["graphs"]["dit"] = entry
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
