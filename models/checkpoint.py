"""Load ACE-Step checkpoints (official or diffusers layout) into our modules without a second copy of the weights.

Official layout (a checkpoints folder):
    <root>/<dit dir, e.g. acestep-v15-xl-base>/config.json, model.safetensors | model-*.safetensors + index,
                                               silence_latent.pt  ([1, 64, N])
    <root>/vae/config.json, diffusion_pytorch_model.safetensors
    <root>/Qwen3-Embedding-0.6B/config.json, model.safetensors, tokenizer.json
Diffusers layout (diffusers scripts/convert_ace_step_to_diffusers.py): transformer/,
condition_encoder/ (holds null_condition_emb and a silence_latent buffer [1, N, 64]), audio_tokenizer/,
audio_token_detokenizer/, vae/, text_encoder/, tokenizer/tokenizer.json, model_index.json.

Modules are built on the meta device and the tensors are read one at a time from the safetensors
files (memory-mapped), cast to the asked dtype and attached with `load_state_dict(assign=True)`,
so peak memory is the model in the target dtype plus one tensor.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .acestep import AceStepModel
from .config import AceStepConfig, ModelPreset, TextEncoderConfig, VaeConfig
from .text_encoder import Qwen3TextEncoder
from .vae import OobleckVae

OFFICIAL_VAE_DIR = "vae"
OFFICIAL_TEXT_DIR = "Qwen3-Embedding-0.6B"
DIFFUSERS_DIRS = {
    "transformer": "decoder.",
    "condition_encoder": "encoder.",
    "audio_tokenizer": "tokenizer.",
    "audio_token_detokenizer": "detokenizer.",
}

# diffusers attention names → official names (inside any attention block).
_DIFFUSERS_ATTN = [("to_q.", "q_proj."), ("to_k.", "k_proj."), ("to_v.", "v_proj."), ("to_out.0.", "o_proj."),
                   ("norm_q.", "q_norm."), ("norm_k.", "k_norm.")]


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files or whose tensors do not fit the model."""


@dataclass
class LoadedCheckpoint:
    preset: ModelPreset
    acestep: AceStepModel | None
    text_encoder: Qwen3TextEncoder | None
    vae: OobleckVae | None
    silence_latent: torch.Tensor  # [1, N, 64], float32
    tokenizer_json: Path
    layout: str


# -- layout detection --------------------------------------------------------------------------

def detect_layout(root: Path) -> str:
    if (root / "model_index.json").exists() or (root / "transformer" / "config.json").exists():
        return "diffusers"
    if _find_official_dit_dir(root, required=False) is not None:
        return "official"
    raise CheckpointError(
        f"{root} is neither an official ACE-Step checkpoints folder (a DiT folder with config.json and "
        "silence_latent.pt, plus vae/ and Qwen3-Embedding-0.6B/) nor a diffusers folder (model_index.json, "
        "transformer/, condition_encoder/, ...). Point --checkpoint at the folder that holds them."
    )


def _find_official_dit_dir(root: Path, required: bool = True) -> Path | None:
    if (root / "silence_latent.pt").exists() and (root / "config.json").exists():
        return root  # pointed straight at the DiT folder
    found = sorted(p.parent for p in root.glob("*/silence_latent.pt") if (p.parent / "config.json").exists())
    if not found:
        if required:
            raise CheckpointError(f"no DiT folder (config.json + silence_latent.pt) under {root}")
        return None
    preferred = [p for p in found if "xl-base" in p.name] or found
    return preferred[0]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"missing {what}: {path} does not exist")
    return path


# -- reading tensors ---------------------------------------------------------------------------

def safetensors_files(folder: Path, stem: str) -> list[Path]:
    """`stem.safetensors`, or the shards listed in `stem.safetensors.index.json`."""
    single = folder / f"{stem}.safetensors"
    if single.exists():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [_need(folder / s, "checkpoint shard") for s in shards]
    raise CheckpointError(f"no {stem}.safetensors (or sharded index) in {folder}")


def iter_tensors(files: Iterable[Path]) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """(name, loader) pairs; loaders read one tensor from the memory-mapped file when called."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                yield name, (lambda h=handle, n=name: h.get_tensor(n))


def load_into(module: torch.nn.Module, tensors: Iterator[tuple[str, Callable[[], torch.Tensor]]],
              rename: Callable[[str], str | None], dtype: torch.dtype, what: str) -> None:
    """Strictly load renamed tensors into a meta-device module, casting each one as it is read."""
    expected = module.state_dict()
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    bad_shape: list[str] = []
    for raw_name, load in tensors:
        name = rename(raw_name)
        if name is None:
            continue
        if name not in expected:
            unexpected.append(raw_name)
            continue
        tensor = load()
        if tuple(tensor.shape) != tuple(expected[name].shape):
            bad_shape.append(f"{raw_name}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[name].shape)}")
            continue
        state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    missing = sorted(set(expected) - set(state))
    if missing or unexpected or bad_shape:
        raise CheckpointError(_mismatch_message(what, missing, unexpected, bad_shape))
    module.load_state_dict(state, strict=True, assign=True)


def _mismatch_message(what: str, missing, unexpected, bad_shape, show: int = 12) -> str:
    lines = [f"the {what} checkpoint does not match the model (wrong checkpoint, config or layout?)"]
    for label, items in (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", bad_shape)):
        if items:
            more = f" … and {len(items) - show} more" if len(items) > show else ""
            lines.append(f"  {label} ({len(items)}): " + ", ".join(items[:show]) + more)
    return "\n".join(lines)


# -- renames -----------------------------------------------------------------------------------

def diffusers_to_official(name: str, prefix: str) -> str:
    for old, new in _DIFFUSERS_ATTN:
        name = re.sub(rf"(self_attn|cross_attn)\.{re.escape(old)}", rf"\1.{new}", name)
    name = name.replace("proj_in_conv.", "proj_in.1.").replace("proj_out_conv.", "proj_out.1.")
    return prefix + name


def _strip_model_prefix(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


# -- configs -----------------------------------------------------------------------------------

def read_diffusers_dit_config(root: Path) -> AceStepConfig:
    """Merge the per-component diffusers configs into one AceStepConfig."""
    tr = json.loads(_need(root / "transformer" / "config.json", "transformer config").read_text())
    ce = json.loads(_need(root / "condition_encoder" / "config.json", "condition encoder config").read_text())
    merged = dict(tr)
    merged.update(
        encoder_hidden_size=ce["hidden_size"],
        encoder_intermediate_size=ce["intermediate_size"],
        encoder_num_attention_heads=ce["num_attention_heads"],
        encoder_num_key_value_heads=ce["num_key_value_heads"],
        text_hidden_dim=ce["text_hidden_dim"],
        timbre_hidden_dim=ce["timbre_hidden_dim"],
        num_lyric_encoder_hidden_layers=ce["num_lyric_encoder_hidden_layers"],
        num_timbre_encoder_hidden_layers=ce["num_timbre_encoder_hidden_layers"],
    )
    tok_cfg = root / "audio_tokenizer" / "config.json"
    if tok_cfg.exists():
        tok = json.loads(tok_cfg.read_text())
        for key in ("fsq_dim", "fsq_input_levels", "fsq_input_num_quantizers", "pool_window_size",
                    "num_attention_pooler_hidden_layers"):
            if key in tok:
                merged[key] = tok[key]
    return AceStepConfig.from_dict(merged)


# -- public entry point --------------------------------------------------------------------------

def load_checkpoint(
    root: str | Path,
    layout: str = "auto",
    dtype: torch.dtype = torch.float32,
    components: Iterable[str] = ("acestep", "text", "vae"),
) -> LoadedCheckpoint:
    """Load the named components ('acestep', 'text', 'vae') from an official or diffusers folder."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in ("official", "diffusers"):
        raise CheckpointError(f"unknown layout {layout!r}: use official, diffusers or auto")
    components = set(components)
    if layout == "official":
        return _load_official(root, dtype, components)
    return _load_diffusers(root, dtype, components)


def _build(factory, cfg):
    with torch.device("meta"):
        return factory(cfg)


def _load_text_and_vae(text_dir: Path, vae_dir: Path, dtype, components):
    text_cfg = TextEncoderConfig.from_json(_need(text_dir / "config.json", "text encoder config"))
    vae_cfg = VaeConfig.from_json(_need(vae_dir / "config.json", "VAE config"))
    text = vae = None
    if "text" in components:
        text = _build(Qwen3TextEncoder, text_cfg)
        load_into(text, iter_tensors(safetensors_files(text_dir, "model")), _text_rename, dtype, "text encoder")
    if "vae" in components:
        vae = _build(OobleckVae, vae_cfg)
        load_into(vae, iter_tensors(safetensors_files(vae_dir, "diffusion_pytorch_model")), lambda n: n, dtype, "VAE")
    return text_cfg, vae_cfg, text, vae


def _text_rename(name: str) -> str | None:
    name = _strip_model_prefix(name)
    return None if name == "lm_head.weight" else name  # tied head of a causal-LM export: not used


def _load_official(root: Path, dtype, components) -> LoadedCheckpoint:
    dit_dir = _find_official_dit_dir(root)
    if dit_dir == root and not (root / OFFICIAL_TEXT_DIR).is_dir():
        raise CheckpointError(
            f"{root} is the DiT folder itself (config.json + silence_latent.pt); point --checkpoint at the parent "
            f"folder ({root.resolve().parent}), which holds it beside {OFFICIAL_VAE_DIR}/ and {OFFICIAL_TEXT_DIR}/")
    base = dit_dir.parent if dit_dir != root else root
    cfg = AceStepConfig.from_json(dit_dir / "config.json")
    text_dir, vae_dir = base / OFFICIAL_TEXT_DIR, base / OFFICIAL_VAE_DIR
    text_cfg, vae_cfg, text, vae = _load_text_and_vae(text_dir, vae_dir, dtype, components)
    model = None
    if "acestep" in components:
        model = _build(AceStepModel, cfg)
        load_into(model, iter_tensors(safetensors_files(dit_dir, "model")), lambda n: n, dtype, "ACE-Step DiT")
    silence = torch.load(_need(dit_dir / "silence_latent.pt", "silence latent"), map_location="cpu",
                         weights_only=True)
    silence = _silence_from_official(silence)
    return LoadedCheckpoint(ModelPreset(cfg, text_cfg, vae_cfg), model, text, vae, silence,
                            _need(text_dir / "tokenizer.json", "tokenizer"), "official")


def _silence_from_official(silence) -> torch.Tensor:
    if not isinstance(silence, torch.Tensor) or silence.ndim != 3:
        raise CheckpointError("silence_latent.pt must hold one tensor of shape [1, 64, N]")
    return silence.float().transpose(1, 2).contiguous()  # stored [1, 64, N], used [1, N, 64]


def _diffusers_tensors(root: Path):
    """Every component's tensors under official names (lazily, so each file stays open while read)."""
    for folder, prefix in DIFFUSERS_DIRS.items():
        for name, load in iter_tensors(safetensors_files(root / folder, "diffusion_pytorch_model")):
            if folder == "condition_encoder" and name == "silence_latent":
                continue  # a buffer of diffusers' module, read separately
            if folder == "condition_encoder" and name == "null_condition_emb":
                yield name, load
            else:
                yield diffusers_to_official(name, prefix), load


def _load_diffusers(root: Path, dtype, components) -> LoadedCheckpoint:
    cfg = read_diffusers_dit_config(root)
    text_cfg, vae_cfg, text, vae = _load_text_and_vae(root / "text_encoder", root / "vae", dtype, components)
    model = None
    if "acestep" in components:
        model = _build(AceStepModel, cfg)
        load_into(model, _diffusers_tensors(root), lambda n: n, dtype, "ACE-Step (diffusers layout)")
    silence = None
    for name, load in iter_tensors(safetensors_files(root / "condition_encoder", "diffusion_pytorch_model")):
        if name == "silence_latent":
            silence = load().float()
    if silence is None:
        raise CheckpointError(f"{root / 'condition_encoder'} holds no silence_latent tensor")
    tok = root / "tokenizer" / "tokenizer.json"
    return LoadedCheckpoint(ModelPreset(cfg, text_cfg, vae_cfg), model, text, vae, silence,
                            _need(tok, "tokenizer"), "diffusers")
