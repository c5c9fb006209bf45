"""Model configuration: the ACE-Step v1.5 DiT/condition config, the text encoder and VAE configs, presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def default_layer_types(num_layers: int) -> tuple[str, ...]:
    # Official default (configuration_acestep_v15.py): even index sliding, odd index full.
    return tuple("sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers))


class _JsonConfig:
    """`from_json` and the known-field filter the three configs share (each has its own `from_dict`)."""

    @classmethod
    def known_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The entries of `data` that name one of our fields; unknown keys (HF bookkeeping) are ignored."""
        names = {f.name for f in fields(cls)}
        return {k: v for k, v in data.items() if k in names}

    @classmethod
    def from_json(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class AceStepConfig(_JsonConfig):
    """Fields of the official `config.json` of an ACE-Step v1.5 DiT checkpoint (`AceStepConfig`,
    configuration_acestep_v15.py beside ace-step/ACE-Step-1.5 acestep/models/xl_base/modeling_acestep_v15_xl_base.py).

    `hidden_size`/`intermediate_size`/heads describe the DiT; the `encoder_*` fields describe the
    condition encoder, audio tokenizer and detokenizer (see `encoder_view`).
    """

    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    encoder_hidden_size: int = 2048
    encoder_intermediate_size: int = 6144
    encoder_num_attention_heads: int = 16
    encoder_num_key_value_heads: int = 8
    layer_types: tuple[str, ...] = field(default_factory=lambda: default_layer_types(32))
    use_sliding_window: bool = True
    sliding_window: int = 128
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    patch_size: int = 2
    in_channels: int = 192
    audio_acoustic_hidden_dim: int = 64
    text_hidden_dim: int = 1024
    timbre_hidden_dim: int = 64
    num_lyric_encoder_hidden_layers: int = 8
    num_timbre_encoder_hidden_layers: int = 4
    num_attention_pooler_hidden_layers: int = 2
    pool_window_size: int = 5
    fsq_dim: int = 2048
    fsq_input_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    fsq_input_num_quantizers: int = 1
    timbre_fix_frame: int = 750
    is_turbo: bool = False
    model_version: str = "xl_base"

    def __post_init__(self) -> None:
        if len(self.layer_types) < self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}; give one type per layer"
            )
        for t in self.layer_types:
            if t not in ("sliding_attention", "full_attention"):
                raise ValueError(f"unknown layer type {t!r}: use 'sliding_attention' or 'full_attention'")

    def window_for(self, layer_idx: int) -> int | None:
        """The ±window of self-attention in a layer, or None for full attention."""
        if self.use_sliding_window and self.layer_types[layer_idx] == "sliding_attention":
            return self.sliding_window
        return None

    def encoder_view(self) -> "AceStepConfig":
        """The config the official code builds for encoder/tokenizer/detokenizer
        (`AceStepConditionGenerationModel.__init__`'s `encoder_config`).

        Only four fields change; `layer_types` and everything else are inherited.
        """
        return dataclasses.replace(
            self,
            hidden_size=self.encoder_hidden_size,
            intermediate_size=self.encoder_intermediate_size,
            num_attention_heads=self.encoder_num_attention_heads,
            num_key_value_heads=self.encoder_num_key_value_heads,
        )

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["fsq_input_levels"] = list(self.fsq_input_levels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AceStepConfig":
        """Read the fields we know from a checkpoint config (derived defaults filled in)."""
        kwargs = cls.known_fields(data)
        n = int(kwargs.get("num_hidden_layers", cls.num_hidden_layers))
        if kwargs.get("layer_types") is None:
            kwargs["layer_types"] = default_layer_types(n)
        kwargs["layer_types"] = tuple(kwargs["layer_types"])
        if "fsq_input_levels" in kwargs:
            kwargs["fsq_input_levels"] = tuple(kwargs["fsq_input_levels"])
        if kwargs.get("head_dim") is None:
            kwargs["head_dim"] = int(kwargs.get("hidden_size", cls.hidden_size)) // int(
                kwargs.get("num_attention_heads", cls.num_attention_heads)
            )
        return cls(**kwargs)


@dataclass(frozen=True)
class TextEncoderConfig(_JsonConfig):
    """Qwen3-Embedding-0.6B, in transformers' config names (a plain `Qwen3Model`, models/qwen3/modeling_qwen3.py)."""

    vocab_size: int = 151669
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_type"] = "qwen3"
        d["architectures"] = ["Qwen3Model"]
        d["hidden_act"] = "silu"
        d["attention_bias"] = False
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextEncoderConfig":
        kwargs = cls.known_fields(data)
        if kwargs.get("head_dim") is None:
            kwargs["head_dim"] = int(kwargs["hidden_size"]) // int(kwargs["num_attention_heads"])
        return cls(**kwargs)


@dataclass(frozen=True)
class VaeConfig(_JsonConfig):
    """diffusers models/autoencoders/autoencoder_oobleck.py `AutoencoderOobleck`, in its config names."""

    encoder_hidden_size: int = 128
    downsampling_ratios: tuple[int, ...] = (2, 4, 4, 6, 10)
    channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    decoder_channels: int = 128
    decoder_input_channels: int = 64
    audio_channels: int = 2
    sampling_rate: int = 48000
    # Width of the encoder's first conv and blocks. None = encoder_hidden_size, as diffusers'
    # AutoencoderOobleck always builds it; a local option so test models can have a cheap encoder.
    encoder_channels: int | None = None

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.downsampling_ratios:
            hop *= r
        return hop

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["downsampling_ratios"] = list(self.downsampling_ratios)
        d["channel_multiples"] = list(self.channel_multiples)
        d["_class_name"] = "AutoencoderOobleck"
        if d["encoder_channels"] is None:
            del d["encoder_channels"]  # keep the config diffusers-clean for real checkpoints
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VaeConfig":
        kwargs = cls.known_fields(data)
        for k in ("downsampling_ratios", "channel_multiples"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        return cls(**kwargs)


@dataclass(frozen=True)
class ModelPreset:
    """The three configs that make one ACE-Step installation."""

    dit: AceStepConfig
    text: TextEncoderConfig
    vae: VaeConfig


def xl_base() -> ModelPreset:
    """ACE-Step v1.5 XL Base (the ACE-Step/acestep-v15-xl-base checkpoint's config)."""
    return ModelPreset(AceStepConfig(), TextEncoderConfig(), VaeConfig())


def tiny(num_layers: int = 4, sliding_window: int = 4, vae_encoder_channels: int | None = None) -> ModelPreset:
    """A few-MB model of the same architecture, for tests, the demo bundle and benchmarks.

    Keeps every structural feature of XL: DiT width != encoder width, GQA, alternating
    sliding/full layers, the hop of 1920 samples per latent frame and 64 latent channels.
    `vae_encoder_channels` narrows the VAE encoder's blocks (128 wide otherwise, as diffusers
    builds it: ~35 GMAC per second of audio); the editing-task tests and the demo bundle use 4.
    """
    dit = AceStepConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        encoder_hidden_size=48,
        encoder_intermediate_size=96,
        encoder_num_attention_heads=4,
        encoder_num_key_value_heads=2,
        layer_types=default_layer_types(num_layers),
        sliding_window=sliding_window,
        text_hidden_dim=32,
        num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2,
        num_attention_pooler_hidden_layers=2,
        fsq_dim=48,
        timbre_fix_frame=750,
    )
    text = TextEncoderConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    # The encoder emits encoder_hidden_size channels (mean | scale), so 64 latent channels need 128.
    vae = VaeConfig(
        encoder_hidden_size=128,
        channel_multiples=(1, 1, 1, 1, 1),
        decoder_channels=4,
        decoder_input_channels=64,
        encoder_channels=vae_encoder_channels,
    )
    return ModelPreset(dit, text, vae)


def bench() -> ModelPreset:
    """The CPU benchmark target: a DiT of 8 layers × 1024 (8 query / 4 KV heads × 128, intermediate 3072,
    alternating sliding/full, window 128) on the tiny preset's encoders, text encoder and VAE.

    Big enough that the DiT dominates a render the way XL's does; small enough for a 2-core CPU.
    """
    small = tiny()
    dit = dataclasses.replace(
        small.dit,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=128,
        layer_types=default_layer_types(8),
        sliding_window=128,
    )
    return ModelPreset(dit, small.text, small.vae)


PRESETS = {"xl-base": xl_base, "tiny": tiny, "bench": bench}
