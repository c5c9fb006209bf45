"""Read LoRA / LoKr adapter files (PEFT, ComfyUI, diffusers, LyCORIS) into per-layer low-rank factors.

Every format ends as {(layer, kind): (A [r, in], B [out, r])} with the adapter's own scale folded
into B, where kind is a DiT linear such as `self_attn.q_proj`. Naming conventions, as the official
ACE-Step code and acestep.cpp (src/adapter-merge.h) read them:
- PEFT directory: adapter_config.json (r, lora_alpha, use_rslora, rank_pattern, alpha_pattern) and
  adapter_model.safetensors, keys `base_model.model.layers.N.self_attn.q_proj.lora_A.weight`
  (PeftModel wraps the DiT decoder, so paths start at `layers.`); scale alpha/r, rsLoRA alpha/√r.
- ComfyUI single file: `diffusion_model.` prefix, `lora_A/lora_B` or `lora_down/lora_up`, and a
  per-module `alpha` tensor (absent: alpha = r).
- diffusers names: `transformer.` prefix and attention projections `to_q/to_k/to_v/to_out.0` (diffusers'
  ACE-Step transformer keeps `self_attn`/`cross_attn`; models/checkpoint.py diffusers_to_official).
- LyCORIS (official `lokr_weights.safetensors`): `lycoris_layers_N_self_attn_q_proj.lokr_w1` etc.,
  the module path with dots flattened to underscores, reversed against the known target names.
  LoKr's delta kron(w1, w2) is turned into exact low-rank factors (lokr_factors).
Pickle files are refused: loading them can run arbitrary code.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import safetensors_io

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
LOKR_FILE = "lokr_weights.safetensors"
_PREFIXES = ("base_model.model.", "diffusion_model.", "transformer.", "decoder.", "model.")
_DIFFUSERS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj", "to_out": "o_proj"}
_MODULE = re.compile(r"^layers\.(\d+)\.(self_attn|cross_attn|mlp)\.([a-z_]+(?:\.0)?)$")
_LORA_SUFFIX = re.compile(r"^(.*)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")
_TRIGGER_KEYS = ("trigger_words", "triggerWords", "trigger_word", "trigger_phrase", "modelspec.trigger_phrase",
                 "activation_text", "ss_trigger_words")
_ALL_KINDS = tuple(f"{b}.{p}" for b in ("self_attn", "cross_attn") for p in ("q_proj", "k_proj", "v_proj", "o_proj")) \
    + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class AdapterError(ValueError):
    """An adapter that cannot be used; the message says why (the caller names the adapter)."""


@dataclass
class Adapter:
    name: str
    path: Path
    format: str  # peft | comfyui | diffusers | lycoris-lora | lycoris-lokr
    modules: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]
    trigger_words: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return max((a.shape[0] for a, _ in self.modules.values()), default=0)

    @property
    def targets(self) -> list[str]:
        return sorted({kind for _, kind in self.modules})

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.modules.values())


def load_adapter(path: str | Path, name: str | None = None) -> Adapter:
    """Read an adapter directory or .safetensors file; AdapterError says what is wrong with it."""
    path = Path(path)
    name = name or path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterError(f"{path.name} is a pickle file ({path.suffix}); loading pickles can run arbitrary code, "
                           "so only .safetensors adapters are read: convert it to safetensors")
    if not path.exists():
        raise AdapterError(f"{path} does not exist")
    config: dict = {}
    if path.is_dir():
        file = _weights_in(path)
        if (path / PEFT_CONFIG).is_file():
            try:
                config = json.loads((path / PEFT_CONFIG).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise AdapterError(f"{PEFT_CONFIG} is not readable JSON ({exc})") from exc
    elif path.suffix.lower() == ".safetensors":
        file = path
    else:
        raise AdapterError(f"{path.name} is not a .safetensors file or an adapter directory")
    try:
        tensors, metadata = safetensors_io.load(file)
    except (OSError, safetensors_io.SafetensorsError) as exc:
        raise AdapterError(str(exc)) from exc
    if not config and "lokr_config" in metadata:
        config = _json_or_empty(metadata["lokr_config"])
    if any(".lokr_w" in k for k in tensors):
        modules, fmt = _lokr_modules(tensors), "lycoris-lokr"
    else:
        modules, fmt = _lora_modules(tensors, config, file)
    if not modules:
        raise AdapterError(f"{file.name} holds no LoRA or LoKr factors")
    for (layer, kind), (a, b) in modules.items():
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise AdapterError(f"layers.{layer}.{kind} holds NaN or Inf values")
    return Adapter(name, path, fmt, modules, _trigger_words(path, file, metadata, config))


def _weights_in(folder: Path) -> Path:
    for candidate in (PEFT_WEIGHTS, LOKR_FILE):
        if (folder / candidate).is_file():
            return folder / candidate
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise AdapterError(f"the folder holds only pickle weights ({', '.join(pickles[:3])}); loading pickles can "
                           "run arbitrary code, so only .safetensors adapters are read: convert it to safetensors")
    raise AdapterError(f"no {PEFT_WEIGHTS} (or a single .safetensors file) in {folder}")


def _json_or_empty(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def module_key(path: str) -> tuple[int, str] | None:
    """'base_model.model.layers.3.self_attn.to_q' → (3, 'self_attn.q_proj'); None when not a DiT layer linear."""
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            path = path[len(prefix):]
    m = _MODULE.match(path)
    if m is None:
        return None
    block, proj = m.group(2), m.group(3)
    proj = _DIFFUSERS.get(proj, proj)
    kind = f"{block}.{proj}"
    return (int(m.group(1)), kind) if kind in _ALL_KINDS else None


def _unknown(keys: list[str]) -> AdapterError:
    shown = ", ".join(keys[:4]) + (f" … and {len(keys) - 4} more" if len(keys) > 4 else "")
    return AdapterError(f"{len(keys)} tensor(s) target no DiT attention/MLP projection this runtime knows: {shown}")


def _pattern(patterns: dict, module: str, default):
    for key, value in (patterns or {}).items():
        if module == key or module.endswith("." + key) or re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _lora_modules(tensors: dict, config: dict, file: Path):
    pairs: dict[str, dict[str, np.ndarray]] = {}
    alphas: dict[str, float] = {}
    unknown = []
    for key, value in tensors.items():
        m = _LORA_SUFFIX.match(key)
        if m:
            pairs.setdefault(m.group(1), {})["A" if m.group(2) in ("lora_A", "lora_down") else "B"] = value
        elif key.endswith(".alpha"):
            alphas[key[:-len(".alpha")]] = float(np.asarray(value).reshape(-1)[0])
        elif "lora_magnitude_vector" in key or key.endswith(".dora_scale"):
            raise AdapterError("DoRA adapters (magnitude vectors) are not supported; use a plain LoRA")
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(unknown)
    fmt = _lora_format(list(pairs), config, file)
    rslora = bool(config.get("use_rslora", False))
    modules, unknown = {}, []
    for raw, ab in pairs.items():
        path = raw[len("lycoris_"):] if raw.startswith("lycoris_") else raw
        key = _lycoris_key(path) if raw.startswith("lycoris_") else module_key(path)
        if key is None:
            unknown.append(raw)
            continue
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{raw} has lora_{'A' if 'A' in ab else 'B'} but no matching "
                               f"lora_{'B' if 'A' in ab else 'A'}")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{raw}: lora_A {list(a.shape)} and lora_B {list(b.shape)} have mismatched ranks "
                               "(A must be [r, in] and B [out, r])")
        r = a.shape[0]
        alpha = alphas.get(raw)
        if alpha is None:
            alpha = float(_pattern(config.get("alpha_pattern"), path, config.get("lora_alpha", r)))
        scale = alpha / (math.sqrt(r) if rslora else r)
        modules[key] = (np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b * scale, np.float32))
    if unknown:
        raise _unknown(unknown)
    return modules, fmt


def _lora_format(names: list[str], config: dict, file: Path) -> str:
    if any(n.startswith("lycoris_") for n in names):
        return "lycoris-lora"
    if any(re.search(r"\.to_(q|k|v|out)", n) for n in names):
        return "diffusers"
    if config or file.name == PEFT_WEIGHTS or any(n.startswith("base_model.model.") for n in names):
        return "peft"
    return "comfyui"


def _lycoris_key(flat: str) -> tuple[int, str] | None:
    """'layers_3_self_attn_q_proj' → (3, 'self_attn.q_proj'): matched against known names, since
    flattening dots to underscores cannot be undone blindly (cross_attn has a real underscore)."""
    m = re.match(r"^(?:decoder_)?layers_(\d+)_(.+)$", flat)
    if m is None:
        return None
    for kind in _ALL_KINDS:
        if m.group(2) == kind.replace(".", "_"):
            return int(m.group(1)), kind
    return None


def _lokr_modules(tensors: dict) -> dict:
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        prefix, _, suffix = key.rpartition(".")
        groups.setdefault(prefix, {})[suffix] = value
    modules, unknown = {}, []
    for prefix, parts in groups.items():
        flat = prefix[len("lycoris_"):] if prefix.startswith("lycoris_") else prefix
        key = _lycoris_key(flat) or module_key(prefix)
        if key is None:
            unknown.append(prefix)
            continue
        if "dora_scale" in parts:
            raise AdapterError(f"{prefix}: DoRA weight decomposition (dora_scale) is not supported")
        if "lokr_t2" in parts:
            raise AdapterError(f"{prefix}: LoKr Tucker factors (lokr_t2) apply to convolutions, not the DiT's linears")
        modules[key] = lokr_factors(prefix, parts)
    if unknown:
        raise _unknown(unknown)
    return modules


def _side(parts: dict, n: int, prefix: str):
    """(U, V, rank or None) with w_n = U @ V, from lokr_wN or lokr_wN_a/lokr_wN_b."""
    w, a, b = parts.get(f"lokr_w{n}"), parts.get(f"lokr_w{n}_a"), parts.get(f"lokr_w{n}_b")
    if w is not None:
        if w.ndim != 2:
            raise AdapterError(f"{prefix}.lokr_w{n} has shape {list(w.shape)}; the DiT's linears need 2-D factors")
        rows, cols = w.shape
        return (w, np.eye(cols, dtype=np.float32), None) if cols <= rows else \
            (np.eye(rows, dtype=np.float32), w, None)
    if a is None or b is None:
        raise AdapterError(f"{prefix}: needs lokr_w{n} or both lokr_w{n}_a and lokr_w{n}_b")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise AdapterError(f"{prefix}: lokr_w{n}_a {list(a.shape)} and lokr_w{n}_b {list(b.shape)} have mismatched ranks")
    return a, b, a.shape[1]


def lokr_factors(prefix: str, parts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Exact low-rank factors of LoKr's delta = scale · kron(w1, w2).

    With w1 = U1 V1 and w2 = U2 V2 (a factorised side as stored, a full side as w·I or I·w), the
    mixed-product rule gives kron(w1, w2) = kron(U1, U2) @ kron(V1, V2): B = scale·kron(U1, U2),
    A = kron(V1, V2), rank r1·r2, no approximation. When r1·r2 exceeds min(out, in) the delta is
    materialised and split by SVD at full rank min(out, in) (exact up to float rounding).
    LyCORIS' scale (LokrModule.__init__): alpha / lora_dim, lora_dim being the rank of the
    factorised side; 1 when neither side is factorised.
    """
    u1, v1, r1 = _side(parts, 1, prefix)
    u2, v2, r2 = _side(parts, 2, prefix)
    lora_dim = r1 if r1 is not None else r2
    alpha = parts.get("alpha")
    scale = 1.0 if lora_dim is None or alpha is None else float(np.asarray(alpha).reshape(-1)[0]) / lora_dim
    b, a = np.kron(u1, u2).astype(np.float64), np.kron(v1, v2).astype(np.float64)
    out_dim, in_dim = b.shape[0], a.shape[1]
    if a.shape[0] > min(out_dim, in_dim):
        u, s, vt = np.linalg.svd(b @ a, full_matrices=False)
        b, a = u * s, vt
    return np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b * scale, np.float32)


def _trigger_words(path: Path, file: Path, metadata: dict, config: dict) -> list[str]:
    """Trigger words from the safetensors metadata, the PEFT config, or a JSON sidecar
    (`<file>.json` beside a single file; `metadata.json` in an adapter folder). Reported, never inserted."""
    sources = [metadata, config]
    sidecars = [file.with_suffix(".json")] if not path.is_dir() else [path / "metadata.json"]
    for sidecar in sidecars:
        if sidecar.is_file() and sidecar.name != PEFT_CONFIG:
            try:
                sources.append(json.loads(sidecar.read_text()))
            except (OSError, ValueError):
                pass
    words: list[str] = []
    for source in sources:
        if not isinstance(source, dict):
            continue
        for key in _TRIGGER_KEYS:
            value = source.get(key)
            if isinstance(value, str):
                try:
                    parsed = json.loads(value)
                except ValueError:
                    parsed = None
                value = parsed if isinstance(parsed, list) else value.split(",")
            if isinstance(value, list):
                words += [str(w).strip() for w in value if str(w).strip()]
    return list(dict.fromkeys(words))
