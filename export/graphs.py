"""Thin export wrappers, one per bundle graph, with the IO names and shapes of docs/bundle-format.md.

Each `GraphSpec` names the graph's inputs and outputs, their symbolic shapes (the manifest's IO
spec), the `torch.export` dynamic shapes, and a function that makes random example inputs of any
size. The wrappers add no maths of their own beyond what the contract says (concatenation of the
condition sequence, the chunk-mask repeat, splitting the VAE posterior).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from acestep_edge.export import adapter_paths
from acestep_edge.models.acestep import AceStepModel
from acestep_edge.models.config import ModelPreset
from acestep_edge.models.text_encoder import Qwen3TextEncoder
from acestep_edge.models.vae import OobleckVae

GRAPH_NAMES = (
    "text_encoder",
    "condition_encoder",
    "dit",
    "vae_decoder",
    "vae_encoder",
    "audio_tokenizer",
    "audio_detokenizer",
)
MAX_FRAMES = 15000  # 600 s at 25 Hz (the contract's upper bound on T)


# -- wrappers ------------------------------------------------------------------------------------


class TextEncoderGraph(nn.Module):
    """caption_ids, lyric_ids → text_states (Qwen3 last hidden state), lyric_embeds (table lookup)."""

    def __init__(self, text: Qwen3TextEncoder):
        super().__init__()
        self.text = text

    def forward(self, caption_ids, lyric_ids):
        return self.text(caption_ids), self.text.embed(lyric_ids)


class ConditionEncoderGraph(nn.Module):
    """Unpadded condition packing: [lyrics | timbre CLS | projected text] along the sequence."""

    def __init__(self, model: AceStepModel):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, text_states, lyric_embeds, refer_latents):
        enc = self.encoder
        text = enc.text_projector(text_states)
        lyrics = enc.lyric_encoder(lyric_embeds, None)
        timbre = enc.timbre_encoder(refer_latents)[:, None, :]
        return torch.cat([lyrics, timbre.to(lyrics.dtype), text], dim=1)


class DiTGraph(nn.Module):
    """DiT velocity with the context [src_latents | chunk_mask×64] built inside, then `DiT.forward`.

    `adapter_kinds` adds the low-rank side paths whose factors follow the five contract inputs
    (export/adapter_paths.py).
    """

    def __init__(self, model: AceStepModel, adapter_kinds=()):
        super().__init__()
        self.dit = model.decoder
        self.side = adapter_paths.SidePaths(self.dit, adapter_kinds) if adapter_kinds else None

    def forward(self, x, t, encoder_states, src_latents, chunk_mask, *factors):
        if self.side is None:
            return self._velocity(x, t, encoder_states, src_latents, chunk_mask)
        self.side.set(factors)
        try:
            return self._velocity(x, t, encoder_states, src_latents, chunk_mask)
        finally:
            self.side.set(None)  # the DiT called outside this wrapper runs without side paths

    def _velocity(self, x, t, encoder_states, src_latents, chunk_mask):
        channels = src_latents.shape[-1]
        mask = chunk_mask.to(src_latents.dtype)[:, :, None].expand(-1, -1, channels)
        return self.dit(x, t, encoder_states, torch.cat([src_latents, mask], dim=-1))


class VaeDecoderGraph(nn.Module):
    def __init__(self, vae: OobleckVae):
        super().__init__()
        self.decoder = vae.decoder

    def forward(self, latents):
        return self.decoder(latents)


class VaeEncoderGraph(nn.Module):
    """audio → posterior mean and raw scale (std = softplus(scale) + 1e-4, applied by the runtime)."""

    def __init__(self, vae: OobleckVae):
        super().__init__()
        self.encoder = vae.encoder

    def forward(self, audio):
        mean, scale = self.encoder(audio).chunk(2, dim=1)
        return mean, scale


class AudioTokenizerGraph(nn.Module):
    """latents [B, T, 64] (T a multiple of the pool window) → quantized, indices; FSQ stays fp32."""

    def __init__(self, model: AceStepModel):
        super().__init__()
        self.tok = model.tokenizer

    def forward(self, latents):
        tok = self.tok
        b, _, c = latents.shape
        x = latents.reshape(b, -1, tok.pool_window_size, c)
        pooled = tok.attention_pooler(tok.audio_acoustic_proj(x))
        return tok.quantizer(pooled)


class AudioDetokenizerGraph(nn.Module):
    def __init__(self, model: AceStepModel):
        super().__init__()
        self.detok = model.detokenizer

    def forward(self, quantized):
        return self.detok(quantized)


# -- specs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str  # numpy-style name: float32, int64
    shape: tuple  # ints and symbol strings

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    build: Callable[[object], nn.Module]  # LoadedCheckpoint → wrapper
    component: str  # which load_checkpoint component holds its weights
    # sizes → example inputs; sizes maps symbol → int (B, T, S, Lt, Ll, Fr, N, T5)
    example: Callable[[dict, ModelPreset, torch.Generator], tuple]
    dynamic: Callable[[], tuple]  # torch.export dynamic_shapes, positional


def _randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def _dims():
    from torch.export import Dim

    return {
        "B": Dim("B", min=1, max=64),
        "T": Dim("T", min=1, max=MAX_FRAMES),
        "S": Dim("S", min=1, max=8192),
        "Lt": Dim("Lt", min=1, max=4096),
        "Ll": Dim("Ll", min=1, max=8192),
        "Fr": Dim("Fr", min=1, max=MAX_FRAMES),
        "T5": Dim("T5", min=1, max=MAX_FRAMES // 5),
        "Tn": Dim("Tn", min=1, max=MAX_FRAMES),
    }


def _text_example(s, p, g):
    v = p.text.vocab_size
    return (torch.randint(0, v, (s["B"], s["Lt"]), generator=g), torch.randint(0, v, (s["B"], s["Ll"]), generator=g))


def _cond_example(s, p, g):
    h = p.dit.text_hidden_dim
    return (_randn(g, s["B"], s["Lt"], h), _randn(g, s["B"], s["Ll"], h),
            _randn(g, s["B"], s["Fr"], p.dit.timbre_hidden_dim))


def _dit_example(kinds):
    def example(s, p, g):
        b, t, c = s["B"], s["T"], p.dit.audio_acoustic_hidden_dim
        mask = (torch.rand(b, t, generator=g) > 0.5).float()
        return (_randn(g, b, t, c), torch.rand(b, generator=g), _randn(g, b, s["S"], p.dit.encoder_hidden_size),
                _randn(g, b, t, c), mask, *adapter_paths.example_factors(p.dit, kinds, g))

    return example


def _dit_factor_io(cfg, kinds) -> tuple:
    ios = []
    for kind in kinds:
        (a_shape, b_shape), (a_name, b_name) = adapter_paths.io_shapes(cfg, kind), adapter_paths.input_names(kind)
        ios += [IOSpec(a_name, "float32", a_shape), IOSpec(b_name, "float32", b_shape)]
    return tuple(ios)


def _vae_dec_example(s, p, g):
    return (_randn(g, s["B"], p.vae.decoder_input_channels, s["T"]),)


def _vae_enc_example(s, p, g):
    return (0.5 * _randn(g, s["B"], p.vae.audio_channels, s["T"] * p.vae.hop_length),)


def _tok_example(s, p, g):
    t = s["T"] - s["T"] % p.dit.pool_window_size or p.dit.pool_window_size
    return (_randn(g, s["B"], t, p.dit.audio_acoustic_hidden_dim),)


def _detok_example(s, p, g):
    return (_randn(g, s["B"], s["T5"], p.dit.encoder_hidden_size),)


def graph_specs(preset: ModelPreset, adapter_targets: str = "attention") -> dict[str, GraphSpec]:
    """The seven graphs of the bundle for a model preset, in contract order; `adapter_targets` (a key of
    adapter_paths.TARGET_SETS) chooses the DiT's adapter side paths."""
    if adapter_targets not in adapter_paths.TARGET_SETS:
        raise ValueError(f"adapter targets must be one of {', '.join(adapter_paths.TARGET_SETS)}, "
                         f"got {adapter_targets!r}")
    kinds = adapter_paths.TARGET_SETS[adapter_targets]
    d, h = preset.dit.encoder_hidden_size, preset.text.hidden_size
    c = preset.dit.audio_acoustic_hidden_dim
    hop, ch = preset.vae.hop_length, preset.vae.audio_channels
    lat = preset.vae.decoder_input_channels
    f32 = "float32"

    def dims(*names):
        return lambda: tuple(names_to_dims(n) for n in names)

    def names_to_dims(spec):
        all_dims = _dims()
        return {axis: (all_dims[sym] if isinstance(sym, str) else sym) for axis, sym in spec.items()}

    specs = [
        GraphSpec("text_encoder",
                  (IOSpec("caption_ids", "int64", ("B", "Lt")), IOSpec("lyric_ids", "int64", ("B", "Ll"))),
                  (IOSpec("text_states", f32, ("B", "Lt", h)), IOSpec("lyric_embeds", f32, ("B", "Ll", h))),
                  lambda ck: TextEncoderGraph(ck.text_encoder), "text", _text_example,
                  dims({0: "B", 1: "Lt"}, {0: "B", 1: "Ll"})),
        GraphSpec("condition_encoder",
                  (IOSpec("text_states", f32, ("B", "Lt", preset.dit.text_hidden_dim)),
                   IOSpec("lyric_embeds", f32, ("B", "Ll", preset.dit.text_hidden_dim)),
                   IOSpec("refer_latents", f32, ("B", "Fr", preset.dit.timbre_hidden_dim))),
                  (IOSpec("encoder_states", f32, ("B", "Ll+1+Lt", d)),),
                  lambda ck: ConditionEncoderGraph(ck.acestep), "acestep", _cond_example,
                  dims({0: "B", 1: "Lt"}, {0: "B", 1: "Ll"}, {0: "B", 1: "Fr"})),
        GraphSpec("dit",
                  (IOSpec("x", f32, ("B", "T", c)), IOSpec("t", f32, ("B",)),
                   IOSpec("encoder_states", f32, ("B", "S", d)), IOSpec("src_latents", f32, ("B", "T", c)),
                   IOSpec("chunk_mask", f32, ("B", "T"))) + _dit_factor_io(preset.dit, kinds),
                  (IOSpec("velocity", f32, ("B", "T", c)),),
                  lambda ck: DiTGraph(ck.acestep, kinds), "acestep", _dit_example(kinds),
                  lambda: dims({0: "B", 1: "T"}, {0: "B"}, {0: "B", 1: "S"}, {0: "B", 1: "T"}, {0: "B", 1: "T"})()
                  + ((tuple(adapter_paths.factor_dynamic(kinds)),) if kinds else ())),
        GraphSpec("vae_decoder",
                  (IOSpec("latents", f32, ("B", lat, "T")),),
                  (IOSpec("audio", f32, ("B", ch, f"T*{hop}")),),
                  lambda ck: VaeDecoderGraph(ck.vae), "vae", _vae_dec_example,
                  dims({0: "B", 2: "T"})),
        GraphSpec("vae_encoder",
                  (IOSpec("audio", f32, ("B", ch, "N")),),
                  (IOSpec("mean", f32, ("B", lat, f"N/{hop}")), IOSpec("scale", f32, ("B", lat, f"N/{hop}"))),
                  lambda ck: VaeEncoderGraph(ck.vae), "vae", _vae_enc_example,
                  lambda: ({0: _dims()["B"], 2: hop * _dims()["Tn"]},)),
        GraphSpec("audio_tokenizer",
                  (IOSpec("latents", f32, ("B", "T", c)),),
                  (IOSpec("quantized", f32, ("B", "T/5", d)), IOSpec("indices", "int64", ("B", "T/5"))),
                  lambda ck: AudioTokenizerGraph(ck.acestep), "acestep", _tok_example,
                  lambda: ({0: _dims()["B"], 1: preset.dit.pool_window_size * _dims()["T5"]},)),
        GraphSpec("audio_detokenizer",
                  (IOSpec("quantized", f32, ("B", "T5", d)),),
                  (IOSpec("latents", f32, ("B", "5*T5", c)),),
                  lambda ck: AudioDetokenizerGraph(ck.acestep), "acestep", _detok_example,
                  dims({0: "B", 1: "T5"})),
    ]
    if preset.dit.sliding_window > TRACE_WINDOW:
        raise ValueError(f"sliding_window {preset.dit.sliding_window} exceeds the trace sizes (±{TRACE_WINDOW}); "
                         "raise TRACE_WINDOW in export/graphs.py")
    if preset.dit.pool_window_size != 5:
        raise ValueError(f"the bundle contract assumes a pool window of 5 frames, got {preset.dit.pool_window_size}")
    return {s.name: s for s in specs}


# Trace sizes must span more than two attention blocks of the widest window the model can have
# (±128): with fewer, the blocked sliding-window lowering sees a single block and the exporter
# specialises the sequence length to the traced value, silently breaking every other length.
TRACE_WINDOW = 128
TRACE_FRAMES = 2 * (2 * TRACE_WINDOW + 3) + 1  # 519 latent frames = 260 DiT tokens (odd: covers padding)
TRACE_TOKENS = 2 * TRACE_WINDOW + 3


def example_sizes(batch: int = 1, frames: int = TRACE_FRAMES, seq: int = 11, seed_sizes: dict | None = None) -> dict:
    """Symbol sizes for example inputs (odd T by default, so parity covers the patch padding)."""
    sizes = {"B": batch, "T": frames, "S": seq, "Lt": 7, "Ll": TRACE_TOKENS, "Fr": TRACE_TOKENS, "T5": 6}
    sizes.update(seed_sizes or {})
    return sizes
