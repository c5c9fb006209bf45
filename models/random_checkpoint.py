"""Write seeded random-weight checkpoints in the official or diffusers layout, for any config.

Tests, the demo bundle and benchmarks go through the same loader as real weights. Tensors are
generated one at a time from their meta-device shapes (each with its own seed derived from its
name, so the values do not depend on write order) and written in shards, so an XL-size checkpoint
never needs the whole model in memory.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Iterator

import torch

from .acestep import AceStepModel
from .checkpoint import DIFFUSERS_DIRS, OFFICIAL_TEXT_DIR, OFFICIAL_VAE_DIR
from .config import AceStepConfig, ModelPreset
from .text_encoder import Qwen3TextEncoder
from .tiny_tokenizer import build_tokenizer
from .vae import OobleckVae

DIT_DIRNAME = "acestep-v15-xl-base"
SHARD_BYTES = 2 * 1024**3
_OFFICIAL_TO_DIFFUSERS_ATTN = [("q_proj.", "to_q."), ("k_proj.", "to_k."), ("v_proj.", "to_v."),
                               ("o_proj.", "to_out.0."), ("q_norm.", "norm_q."), ("k_norm.", "norm_k.")]


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A plausible value for a parameter: norms near 1, small biases, fan-in scaled matrices.

    Norm weights are randomised around 1 (not exactly 1) so a misplaced norm shows up in parity tests.
    """
    g = _generator(seed, name)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    owner = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if leaf == "weight" and ("norm" in owner or owner.endswith("layernorm")):
        return 1.0 + 0.1 * x
    if leaf == "weight_g":
        return 0.5 + 0.5 * x.abs()
    if leaf in ("alpha", "beta"):
        return 0.1 * x
    if leaf == "bias":
        return 0.02 * x
    if leaf == "scale_shift_table":
        return x / math.sqrt(shape[-1])
    if len(shape) >= 2 and leaf in ("weight", "weight_v"):
        return x / math.sqrt(math.prod(shape[1:]))
    return x


def random_silence_latent(seed: int, frames: int, channels: int = 64) -> torch.Tensor:
    """[1, channels, frames] like the real file: a near-constant per-channel vector with a distinct 4-frame head."""
    g = _generator(seed, "silence_latent")
    level = torch.randn(channels, 1, generator=g)
    body = level + 0.01 * torch.randn(channels, frames, generator=g)
    body[:, :4] += 0.5 * torch.randn(channels, 4, generator=g)
    return body[None].contiguous()


def _meta_shapes(module_factory, cfg) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = module_factory(cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _write_shards(folder: Path, stem: str, tensors: Iterator[tuple[str, torch.Tensor]],
                  shard_bytes: int = SHARD_BYTES) -> None:
    """Write `stem.safetensors`, or numbered shards plus an index when the total exceeds one shard."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    written: list[Path] = []
    weight_map: dict[str, str] = {}

    def flush() -> None:
        if not shards[-1]:
            return
        idx = len(written) + 1
        path = folder / f"{stem}-{idx:05d}.safetensors.part"
        save_file(shards[-1], str(path), metadata={"format": "pt"})
        written.append(path)
        for k in shards[-1]:
            weight_map[k] = path.name
        shards[-1] = {}

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            flush()
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    flush()
    if len(written) == 1:
        written[0].rename(folder / f"{stem}.safetensors")
        return
    total = len(written)
    renames = {}
    for i, path in enumerate(written, 1):
        final = f"{stem}-{i:05d}-of-{total:05d}.safetensors"
        path.rename(folder / final)
        renames[path.name] = final
    index = {"metadata": {}, "weight_map": {k: renames[v] for k, v in sorted(weight_map.items())}}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _generate(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype, rename=lambda n: n, prefix=""):
    for name, shape in shapes.items():
        yield rename(name), random_tensor(prefix + name, shape, seed).to(dtype)


def write_random_checkpoint(
    root: str | Path,
    preset: ModelPreset,
    seed: int = 0,
    layout: str = "official",
    dtype: torch.dtype = torch.bfloat16,
    silence_frames: int = 15000,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Write a complete random checkpoint (DiT + condition encoder, text encoder, VAE, tokenizer, silence).

    Values are identical across layouts for the same seed (names are seeded in official form).
    """
    root = Path(root)
    if layout not in ("official", "diffusers"):
        raise ValueError(f"unknown layout {layout!r}: use 'official' or 'diffusers'")
    acestep_shapes = _meta_shapes(AceStepModel, preset.dit)
    text_shapes = _meta_shapes(Qwen3TextEncoder, preset.text)
    vae_shapes = _meta_shapes(OobleckVae, preset.vae)
    silence = random_silence_latent(seed, silence_frames, preset.dit.audio_acoustic_hidden_dim)
    tokenizer = build_tokenizer(min(preset.text.vocab_size, 4096))

    if layout == "official":
        dit_dir = root / DIT_DIRNAME
        dit_dir.mkdir(parents=True, exist_ok=True)
        _write_json(dit_dir / "config.json", _official_dit_config(preset.dit))
        _write_shards(dit_dir, "model", _generate(acestep_shapes, seed, dtype), shard_bytes)
        torch.save(silence.to(dtype), dit_dir / "silence_latent.pt")
        text_dir, vae_dir = root / OFFICIAL_TEXT_DIR, root / OFFICIAL_VAE_DIR
        text_stem, tok_path = "model", root / OFFICIAL_TEXT_DIR / "tokenizer.json"
    else:
        _write_diffusers_dit(root, preset.dit, acestep_shapes, seed, dtype, silence, shard_bytes)
        text_dir, vae_dir = root / "text_encoder", root / "vae"
        text_stem, tok_path = "model", root / "tokenizer" / "tokenizer.json"
    text_dir.mkdir(parents=True, exist_ok=True)
    vae_dir.mkdir(parents=True, exist_ok=True)
    _write_json(text_dir / "config.json", preset.text.to_dict())
    _write_shards(text_dir, text_stem, _generate(text_shapes, seed, dtype, prefix="text_encoder."), shard_bytes)
    _write_json(vae_dir / "config.json", preset.vae.to_dict())
    _write_shards(vae_dir, "diffusion_pytorch_model", _generate(vae_shapes, seed, dtype, prefix="vae."), shard_bytes)
    tok_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tok_path))
    return root


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _official_dit_config(cfg: AceStepConfig) -> dict:
    data = cfg.to_dict()
    data.update(architectures=["AceStepConditionGenerationModel"], model_type="acestep")
    return data


def official_to_diffusers(name: str) -> tuple[str, str]:
    """Official key → (diffusers component folder, key inside it)."""
    if name == "null_condition_emb":
        return "condition_encoder", name
    for folder, prefix in DIFFUSERS_DIRS.items():
        if name.startswith(prefix):
            inner = name[len(prefix):]
            for old, new in _OFFICIAL_TO_DIFFUSERS_ATTN:
                inner = inner.replace(f"self_attn.{old}", f"self_attn.{new}").replace(
                    f"cross_attn.{old}", f"cross_attn.{new}")
            inner = inner.replace("proj_in.1.", "proj_in_conv.").replace("proj_out.1.", "proj_out_conv.")
            return folder, inner
    raise ValueError(f"no diffusers component for {name}")


def _write_diffusers_dit(root, cfg: AceStepConfig, shapes, seed, dtype, silence, shard_bytes) -> None:
    by_folder: dict[str, dict[str, tuple[int, ...]]] = {f: {} for f in DIFFUSERS_DIRS}
    for name, shape in shapes.items():
        folder, inner = official_to_diffusers(name)
        by_folder[folder][name] = shape
    for folder, folder_shapes in by_folder.items():
        tensors = _generate(folder_shapes, seed, dtype, rename=lambda n: official_to_diffusers(n)[1])
        if folder == "condition_encoder":
            # diffusers keeps the silence latent as a [1, N, 64] buffer of the condition encoder.
            sil = silence.transpose(1, 2).contiguous().to(dtype)
            tensors = _chain(tensors, [("silence_latent", sil)])
        _write_shards(root / folder, "diffusion_pytorch_model", tensors, shard_bytes)
        _write_json(root / folder / "config.json", _diffusers_config(folder, cfg))
    _write_json(root / "model_index.json", {
        "_class_name": "AceStepPipeline",
        "transformer": ["diffusers", "AceStepTransformer1DModel"],
        "condition_encoder": ["diffusers", "AceStepConditionEncoder"],
        "audio_tokenizer": ["diffusers", "AceStepAudioTokenizer"],
        "audio_token_detokenizer": ["diffusers", "AceStepAudioTokenDetokenizer"],
        "vae": ["diffusers", "AutoencoderOobleck"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    })


def _chain(*iterables):
    for it in iterables:
        yield from it


def _diffusers_config(folder: str, cfg: AceStepConfig) -> dict:
    enc = cfg.encoder_view()
    common = dict(head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, attention_bias=cfg.attention_bias,
                  rms_norm_eps=cfg.rms_norm_eps, sliding_window=cfg.sliding_window,
                  layer_types=list(cfg.layer_types))
    encoder_dims = dict(hidden_size=enc.hidden_size, intermediate_size=enc.intermediate_size,
                        num_attention_heads=enc.num_attention_heads, num_key_value_heads=enc.num_key_value_heads)
    if folder == "transformer":
        return dict(_class_name="AceStepTransformer1DModel", hidden_size=cfg.hidden_size,
                    intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                    num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                    in_channels=cfg.in_channels, audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim,
                    patch_size=cfg.patch_size, encoder_hidden_size=cfg.encoder_hidden_size,
                    is_turbo=cfg.is_turbo, model_version=cfg.model_version, **common)
    if folder == "condition_encoder":
        return dict(_class_name="AceStepConditionEncoder", text_hidden_dim=cfg.text_hidden_dim,
                    timbre_hidden_dim=cfg.timbre_hidden_dim,
                    num_lyric_encoder_hidden_layers=cfg.num_lyric_encoder_hidden_layers,
                    num_timbre_encoder_hidden_layers=cfg.num_timbre_encoder_hidden_layers,
                    **encoder_dims, **common)
    pooler = dict(audio_acoustic_hidden_dim=cfg.audio_acoustic_hidden_dim, pool_window_size=cfg.pool_window_size,
                  num_attention_pooler_hidden_layers=cfg.num_attention_pooler_hidden_layers)
    if folder == "audio_tokenizer":
        return dict(_class_name="AceStepAudioTokenizer", fsq_dim=cfg.fsq_dim,
                    fsq_input_levels=list(cfg.fsq_input_levels),
                    fsq_input_num_quantizers=cfg.fsq_input_num_quantizers, **pooler, **encoder_dims, **common)
    return dict(_class_name="AceStepAudioTokenDetokenizer", **pooler, **encoder_dims, **common)
