"""The Oobleck audio VAE (diffusers' `AutoencoderOobleck`) and its tiled encode/decode
(ace-step/ACE-Step-1.5 acestep/core/generation/handler/vae_decode.py `VaeDecodeMixin.tiled_decode`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from acestep_edge.models.config import VaeConfig

# Residual units use kernel 7 with these dilations, in this order (res_unit1..3).
_RES_DILATIONS = (1, 3, 9)
# Added to the posterior std so it never reaches zero (OobleckDiagonalGaussianDistribution).
_STD_FLOOR = 1e-4
# Keeps 1/beta finite in Snake when exp(beta) underflows.
_SNAKE_EPS = 1e-9


class Snake1d(nn.Module):
    """Snake activation x + sin²(αx)/β with per-channel α, β stored as logs (logscale=True)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Zeros mean α = β = 1, the diffusers initialisation.
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(self.alpha)
        beta = torch.exp(self.beta)
        return x + (beta + _SNAKE_EPS).reciprocal() * torch.sin(alpha * x).pow(2)


class _WeightNormConv(nn.Module):
    """Shared weight-norm storage: `weight_g` (one gain per slice of dim 0) and direction `weight_v`.

    The names match the old-style `torch.nn.utils.weight_norm` keys found in the real checkpoint.
    """

    def __init__(self, v_shape: tuple[int, int, int], bias_channels: int, fan_in: int, bias: bool) -> None:
        super().__init__()
        # Registration order gives diffusers' state-dict order: bias, weight_g, weight_v.
        self.bias = nn.Parameter(torch.empty(bias_channels)) if bias else None
        self.weight_g = nn.Parameter(torch.empty(v_shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(v_shape))
        self._fan_in = fan_in
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Same distribution as nn.Conv1d's default init; g starts at ||v|| so weight == v.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        self.weight_g.copy_(torch.linalg.vector_norm(self.weight_v, dim=(1, 2), keepdim=True))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self._fan_in) if self._fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> torch.Tensor:
        """g · v / ||v||, the norm taken over every dim but 0 (torch's weight_norm with dim=0)."""
        v = self.weight_v
        return v * (self.weight_g / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))


class WNConv1d(_WeightNormConv):
    """Weight-normalised Conv1d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        self.stride, self.padding, self.dilation = stride, padding, dilation
        super().__init__((out_channels, in_channels, kernel_size), out_channels, in_channels * kernel_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(_WeightNormConv):
    """Weight-normalised ConvTranspose1d; its weight is [in, out, k], so g is per input channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int) -> None:
        self.stride, self.padding = stride, padding
        # nn.ConvTranspose1d computes fan_in from weight.size(1) * k.
        super().__init__((in_channels, out_channels, kernel_size), out_channels, out_channels * kernel_size, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.weight(), self.bias, self.stride, self.padding)


class ResidualUnit(nn.Module):
    """x + conv1x1(snake(conv7_dilated(snake(x)))); the padding keeps the length unchanged."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = WNConv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(channels)
        self.conv2 = WNConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


def _resample_padding(stride: int) -> int:
    # Kernel 2·stride with this padding maps length L to L/stride (and back) for even strides.
    return math.ceil(stride / 2)


class EncoderBlock(nn.Module):
    """Three residual units at `in_ch`, then a strided conv down to `out_ch`."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.res_unit1 = ResidualUnit(in_ch, _RES_DILATIONS[0])
        self.res_unit2 = ResidualUnit(in_ch, _RES_DILATIONS[1])
        self.res_unit3 = ResidualUnit(in_ch, _RES_DILATIONS[2])
        self.snake1 = Snake1d(in_ch)
        self.conv1 = WNConv1d(in_ch, out_ch, 2 * stride, stride=stride, padding=_resample_padding(stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class DecoderBlock(nn.Module):
    """A transposed conv up from `in_ch` to `out_ch`, then three residual units."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(in_ch)
        self.conv_t1 = WNConvTranspose1d(in_ch, out_ch, 2 * stride, stride=stride, padding=_resample_padding(stride))
        self.res_unit1 = ResidualUnit(out_ch, _RES_DILATIONS[0])
        self.res_unit2 = ResidualUnit(out_ch, _RES_DILATIONS[1])
        self.res_unit3 = ResidualUnit(out_ch, _RES_DILATIONS[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class OobleckEncoder(nn.Module):
    """Audio [B, C, N] → posterior parameters [B, encoder_hidden_size, N/hop] (mean and scale halves)."""

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        h = cfg.encoder_hidden_size
        w = cfg.encoder_channels or h  # diffusers: always h
        mults = (1,) + tuple(cfg.channel_multiples)
        self.conv1 = WNConv1d(cfg.audio_channels, w, 7, padding=3)
        self.block = nn.ModuleList(
            EncoderBlock(w * mults[i], w * mults[i + 1], s) for i, s in enumerate(cfg.downsampling_ratios)
        )
        self.snake1 = Snake1d(w * mults[-1])
        self.conv2 = WNConv1d(w * mults[-1], h, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for blk in self.block:
            x = blk(x)
        return self.conv2(self.snake1(x))


class OobleckDecoder(nn.Module):
    """Latents [B, decoder_input_channels, T] → audio [B, C, T·hop]; strides are the encoder's reversed."""

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        ch = cfg.decoder_channels
        mults = (1,) + tuple(cfg.channel_multiples)
        strides = tuple(reversed(cfg.downsampling_ratios))
        n = len(strides)
        self.conv1 = WNConv1d(cfg.decoder_input_channels, ch * mults[-1], 7, padding=3)
        self.block = nn.ModuleList(
            DecoderBlock(ch * mults[n - i], ch * mults[n - i - 1], s) for i, s in enumerate(strides)
        )
        self.snake1 = Snake1d(ch)
        self.conv2 = WNConv1d(ch, cfg.audio_channels, 7, padding=3, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for blk in self.block:
            x = blk(x)
        return self.conv2(self.snake1(x))


def _validate_config(cfg: VaeConfig) -> None:
    if len(cfg.channel_multiples) != len(cfg.downsampling_ratios):
        raise ValueError(
            f"channel_multiples {cfg.channel_multiples} and downsampling_ratios {cfg.downsampling_ratios} "
            "must have the same length (one per encoder block)"
        )
    odd = [r for r in cfg.downsampling_ratios if r < 2 or r % 2]
    if odd:
        # Odd strides change lengths by ±1 per block, breaking the N = T·hop contract.
        raise ValueError(f"downsampling_ratios must be even integers >= 2, got {cfg.downsampling_ratios}")
    if cfg.encoder_hidden_size % 2:
        raise ValueError(f"encoder_hidden_size must be even (mean and scale halves), got {cfg.encoder_hidden_size}")


class OobleckVae(nn.Module):
    """AutoencoderOobleck with diffusers' state-dict names; `forward` is `decode`.

    The encoder emits `encoder_hidden_size // 2` latent channels; a usable model needs that to
    equal `decoder_input_channels` (64 for ACE-Step), but, like diffusers, construction allows
    a mismatch so that either half can be built alone.
    """

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        _validate_config(cfg)
        self.config = cfg
        self.encoder = OobleckEncoder(cfg)
        self.decoder = OobleckDecoder(cfg)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def latent_channels(self) -> int:
        """Channels of the encoder's mean/scale (what `decode` needs is `config.decoder_input_channels`)."""
        return self.config.encoder_hidden_size // 2

    def encode(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, audio_channels, N] → (mean, scale), each [B, latent_channels, N // hop].

        The posterior std is `softplus(scale) + 1e-4` (see `posterior_std`).
        """
        if audio.dim() != 3 or audio.shape[1] != self.config.audio_channels:
            raise ValueError(
                f"audio must be [B, {self.config.audio_channels}, N], got shape {tuple(audio.shape)}"
            )
        if audio.shape[-1] < self.hop_length:
            raise ValueError(f"audio has {audio.shape[-1]} samples; need at least one hop ({self.hop_length})")
        h = self.encoder(audio)
        mean, scale = h.chunk(2, dim=1)
        return mean, scale

    @staticmethod
    def posterior_std(scale: torch.Tensor) -> torch.Tensor:
        return F.softplus(scale) + _STD_FLOOR

    @staticmethod
    def sample_latents(mean: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A posterior sample mean + std·noise (diffusers' `latent_dist.sample()` with explicit noise)."""
        if not (mean.shape == scale.shape == noise.shape):
            raise ValueError(
                f"mean, scale and noise must share a shape, got {tuple(mean.shape)}, "
                f"{tuple(scale.shape)}, {tuple(noise.shape)}"
            )
        return mean + OobleckVae.posterior_std(scale) * noise

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, decoder_input_channels, T] → audio [B, audio_channels, T·hop]."""
        c = self.config.decoder_input_channels
        if latents.dim() != 3 or latents.shape[1] != c:
            raise ValueError(f"latents must be [B, {c}, T], got shape {tuple(latents.shape)}")
        if latents.shape[-1] < 1:
            raise ValueError("latents must have at least one frame")
        return self.decoder(latents)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)


# -- tiling (official `tiled_decode`): overlap-discard, no crossfade---------------------------------------


def _tile_windows(length: int, stride: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(win_start, win_end, core_start, core_end) for each core [k·stride, (k+1)·stride) ∩ [0, length)."""
    out = []
    for k in range(math.ceil(length / stride)):
        core_start = k * stride
        core_end = min(core_start + stride, length)
        out.append((max(0, core_start - overlap), min(length, core_end + overlap), core_start, core_end))
    return out


def _shrink_overlap(chunk: int, overlap: int) -> int:
    # Upstream halves the overlap until the core stride is positive instead of failing.
    while chunk - 2 * overlap <= 0 and overlap > 0:
        overlap //= 2
    return overlap


def tiled_decode(vae: OobleckVae, latents: torch.Tensor, chunk: int = 512, overlap: int = 64) -> torch.Tensor:
    """Decode [B, C, T] in windows of at most `chunk` frames, keeping each window's core only.

    Like upstream: T <= chunk decodes directly; batch items are decoded one at a time (memory);
    the trimmed cores are concatenated, so the result is [B, audio_channels, T·hop].
    """
    if chunk < 1 or overlap < 0:
        raise ValueError(f"need chunk >= 1 and overlap >= 0, got chunk={chunk}, overlap={overlap}")
    if latents.dim() != 3:
        raise ValueError(f"latents must be [B, C, T], got shape {tuple(latents.shape)}")
    t = latents.shape[-1]
    if t <= chunk:
        return vae.decode(latents)
    overlap = _shrink_overlap(chunk, overlap)
    hop = vae.hop_length
    windows = _tile_windows(t, chunk - 2 * overlap, overlap)
    items = []
    for b in range(latents.shape[0]):
        z = latents[b : b + 1]
        parts = []
        for ws, we, cs, ce in windows:
            audio = vae.decode(z[:, :, ws:we])
            parts.append(audio[:, :, (cs - ws) * hop : audio.shape[-1] - (we - ce) * hop])
        items.append(torch.cat(parts, dim=-1))
    return torch.cat(items, dim=0)


def _seconds_to_hops(seconds: float, sr: int, hop: int, what: str) -> int:
    samples = seconds * sr
    frames = samples / hop
    if abs(frames - round(frames)) > 1e-9:
        raise ValueError(f"{what}={seconds} s is {samples} samples, not a whole number of {hop}-sample hops")
    return int(round(frames))


def tiled_encode(
    vae: OobleckVae, audio: torch.Tensor, chunk_seconds: float = 30, overlap_seconds: float = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode [B, C, N] in windows of `chunk_seconds`, discarding `overlap_seconds` of latents per side.

    Returns (mean, scale) [B, latent_channels, N // hop]. Audio no longer than one chunk is
    encoded directly (as upstream). Chunk and overlap must be whole numbers of hops (any whole
    number of seconds is, at 48 kHz / hop 1920).
    """
    if audio.dim() != 3:
        raise ValueError(f"audio must be [B, C, N], got shape {tuple(audio.shape)}")
    sr, hop = vae.config.sampling_rate, vae.hop_length
    chunk_f = _seconds_to_hops(chunk_seconds, sr, hop, "chunk_seconds")
    overlap_f = _seconds_to_hops(overlap_seconds, sr, hop, "overlap_seconds")
    if chunk_f - 2 * overlap_f <= 0:
        raise ValueError(f"chunk_seconds ({chunk_seconds}) must exceed 2 * overlap_seconds ({overlap_seconds})")
    n = audio.shape[-1]
    if n <= chunk_f * hop:
        return vae.encode(audio)
    # Windows are laid out in samples (as upstream) with hop-aligned core boundaries, so the
    # discarded sample counts are whole frames and the cores tile [0, N // hop) exactly.
    means, scales = [], []
    for ws, we, cs, ce in _tile_windows(n, (chunk_f - 2 * overlap_f) * hop, overlap_f * hop):
        if ce // hop == cs // hop:
            continue  # a tail shorter than one hop yields no latent frame (nor does a full encode)
        mean, scale = vae.encode(audio[:, :, ws:we])
        lo = (cs - ws) // hop
        hi = mean.shape[-1] - (we - ce) // hop
        means.append(mean[:, :, lo:hi])
        scales.append(scale[:, :, lo:hi])
    return torch.cat(means, dim=-1), torch.cat(scales, dim=-1)
