"""Tests for models/vae.py: diffusers AutoencoderOobleck parity, state-dict layout and tiling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from acestep_edge.models.config import VaeConfig, tiny, xl_base
from acestep_edge.models.vae import OobleckVae, tiled_decode, tiled_encode

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.export  # torch, onnx and the export side

# diffusers' own count for the ACE-Step v1.5 VAE config (≈ 168.7 M, the ACE-Step v1.5 vae/ checkpoint).
XL_VAE_PARAMS = 168_695_426

# The encoder emits encoder_hidden_size channels (mean | scale), so a 64-latent-channel VAE needs
# encoder_hidden_size 128; tiny() uses that with channel_multiples of 1 (~2.9 M parameters).
ROUNDTRIP_TINY = VaeConfig(encoder_hidden_size=128, channel_multiples=(1, 1, 1, 1, 1), decoder_channels=4)


def _diffusers_vae(cfg: VaeConfig):
    kwargs = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    return diffusers.AutoencoderOobleck(**kwargs)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _random_state(cfg: VaeConfig, seed: int) -> dict[str, torch.Tensor]:
    """Realistic random weights: conv-init directions, positive gains near ||v||, small snake logs."""
    torch.manual_seed(seed)
    sd = OobleckVae(cfg).state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for k, v in sd.items():
        if k.endswith("weight_g"):
            v = v * (0.5 + torch.rand(v.shape, generator=gen))
        elif k.endswith(("alpha", "beta")):
            v = 0.3 * torch.randn(v.shape, generator=gen)
        elif k.endswith("bias"):
            v = 0.05 * torch.randn(v.shape, generator=gen)
        out[k] = v.clone()
    return out


def _rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return float((ours - theirs).abs().max() / theirs.abs().max())


# -- (a) state-dict layout ----------------------------------------------------------------


@pytest.mark.parametrize("cfg", [tiny().vae, ROUNDTRIP_TINY], ids=["tiny", "roundtrip_tiny"])
def test_state_dict_matches_diffusers_small(cfg):
    ours, theirs = _shapes(OobleckVae(cfg)), _shapes(_diffusers_vae(cfg))
    assert list(ours) == list(theirs)
    assert ours == theirs
    # Old-style weight-norm names, as in the real checkpoint.
    assert "decoder.block.0.conv_t1.weight_g" in ours and "decoder.conv2.bias" not in ours


def test_state_dict_matches_diffusers_xl_on_meta():
    cfg = xl_base().vae
    with torch.device("meta"):
        ours_m = OobleckVae(cfg)
        theirs_m = _diffusers_vae(cfg)
    ours, theirs = _shapes(ours_m), _shapes(theirs_m)
    assert ours == theirs
    assert ours["decoder.block.0.conv_t1.weight_v"] == (2048, 1024, 20)
    assert ours["decoder.block.0.conv_t1.weight_g"] == (2048, 1, 1)
    n_ours = sum(p.numel() for p in ours_m.parameters())
    n_theirs = sum(p.numel() for p in theirs_m.parameters())
    assert n_ours == n_theirs == XL_VAE_PARAMS
    assert all(p.device.type == "meta" for p in ours_m.parameters())


def test_save_pretrained_keys_are_ours(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    cfg = tiny().vae
    _diffusers_vae(cfg).save_pretrained(tmp_path)
    on_disk = safetensors.load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in on_disk.items()} == _shapes(OobleckVae(cfg))


# -- (b) numerical parity ----------------------------------------------------------------


@pytest.mark.parametrize("cfg", [tiny().vae, ROUNDTRIP_TINY], ids=["tiny", "roundtrip_tiny"])
def test_encode_decode_match_diffusers(cfg):
    sd = _random_state(cfg, seed=0)
    ours = OobleckVae(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    theirs = _diffusers_vae(cfg).eval()
    theirs.load_state_dict(sd, strict=True)
    hop = cfg.hop_length
    gen = torch.Generator().manual_seed(1)
    audio = 0.5 * torch.randn(2, cfg.audio_channels, 4 * hop, generator=gen)
    latents = torch.randn(2, cfg.decoder_input_channels, 5, generator=gen)
    with torch.no_grad():
        mean, scale = ours.encode(audio)
        dist = theirs.encode(audio).latent_dist
        out = ours.decode(latents)
        ref = theirs.decode(latents).sample
    assert mean.shape == (2, cfg.encoder_hidden_size // 2, 4)
    assert _rel_err(mean, dist.mean) <= 1e-5
    assert _rel_err(scale, dist.scale) <= 1e-5
    assert _rel_err(OobleckVae.posterior_std(scale), dist.std) <= 1e-5
    assert out.shape == (2, cfg.audio_channels, 5 * hop)
    assert _rel_err(out, ref) <= 1e-5
    # The random weights must actually do something (not a near-zero or constant output).
    assert float(out.std()) > 1e-3 and float(mean.std()) > 1e-3


def test_sample_latents_matches_diffusers_sample():
    cfg = tiny().vae
    sd = _random_state(cfg, seed=3)
    ours = OobleckVae(cfg).eval()
    ours.load_state_dict(sd)
    theirs = _diffusers_vae(cfg).eval()
    theirs.load_state_dict(sd)
    audio = torch.randn(1, 2, 3 * cfg.hop_length, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mean, scale = ours.encode(audio)
        ref = theirs.encode(audio).latent_dist.sample(generator=torch.Generator().manual_seed(5))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    got = OobleckVae.sample_latents(mean, scale, noise)
    assert _rel_err(got, ref) <= 1e-5
    assert not torch.allclose(got, mean)
    with pytest.raises(ValueError):
        OobleckVae.sample_latents(mean, scale, noise[..., :1])


def test_meta_construction_and_assign_load():
    cfg = tiny().vae
    sd = _random_state(cfg, seed=7)
    with torch.device("meta"):
        vae = OobleckVae(cfg)
    vae.load_state_dict(sd, assign=True, strict=True)
    ref = OobleckVae(cfg)
    ref.load_state_dict(sd)
    z = torch.randn(1, 64, 3, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), ref.decode(z), rtol=0, atol=0)


def test_input_validation():
    vae = OobleckVae(tiny().vae)
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 32, 4))
    with pytest.raises(ValueError, match="audio must be"):
        vae.encode(torch.zeros(1, 1, 1920))
    with pytest.raises(ValueError, match="at least one hop"):
        vae.encode(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="same length"):
        OobleckVae(dataclasses.replace(tiny().vae, channel_multiples=(1, 2)))


# -- (c) tiling ----------------------------------------------------------------------------


def _reference_tiled_decode(vae, latents, chunk, overlap):
    """Overlap-discard (official `VaeDecodeMixin.tiled_decode`) written with numpy slicing, independent of
    models/vae.py."""
    t, hop = latents.shape[-1], vae.hop_length
    stride = chunk - 2 * overlap
    pieces = []
    start = 0
    while start < t:
        end = min(start + stride, t)
        lo, hi = max(0, start - overlap), min(t, end + overlap)
        with torch.no_grad():
            window = np.stack([vae.decode(latents[b : b + 1, :, lo:hi])[0].numpy() for b in range(latents.shape[0])])
        assert window.shape[-1] == (hi - lo) * hop
        left = (start - lo) * hop
        pieces.append(window[..., left : left + (end - start) * hop])
        start += stride
    return np.concatenate(pieces, axis=-1)


@pytest.mark.parametrize("t", [37, 16, 9])
def test_tiled_decode_matches_reference(t):
    cfg = tiny().vae
    vae = OobleckVae(cfg).eval()
    vae.load_state_dict(_random_state(cfg, seed=11))
    latents = torch.randn(2, 64, t, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        got = tiled_decode(vae, latents, chunk=16, overlap=4)
        full = vae.decode(latents)
    assert got.shape == (2, cfg.audio_channels, t * cfg.hop_length)
    if t <= 16:
        # One window covers everything: upstream decodes directly.
        torch.testing.assert_close(got, full, rtol=0, atol=0)
        return
    ref = _reference_tiled_decode(vae, latents, chunk=16, overlap=4)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    # Seams exist (overlap-discard is not exact), but the tiles are the same signal.
    assert not torch.equal(got, full)
    assert _rel_err(got, full) < 0.5


def test_tiled_decode_rejects_bad_args():
    vae = OobleckVae(tiny().vae)
    with pytest.raises(ValueError):
        tiled_decode(vae, torch.zeros(1, 64, 4), chunk=0)
    with pytest.raises(ValueError):
        tiled_decode(vae, torch.zeros(64, 4))


def test_tiled_encode_matches_reference():
    # 4 latent frames per second keeps the "seconds" arguments small on a cheap encoder.
    cfg = dataclasses.replace(tiny().vae, sampling_rate=4 * 1920)
    hop = cfg.hop_length
    vae = OobleckVae(cfg).eval()
    vae.load_state_dict(_random_state(cfg, seed=13))
    n = 23 * hop + 700  # 23 frames and a partial hop; not a multiple of the 6-frame stride
    audio = torch.randn(1, 2, n, generator=torch.Generator().manual_seed(14))
    chunk_f, overlap_f = 8, 1  # chunk 2 s, overlap 0.25 s
    with torch.no_grad():
        mean, scale = tiled_encode(vae, audio, chunk_seconds=2, overlap_seconds=0.25)
        full_mean, _ = vae.encode(audio)
        ref_m, ref_s = [], []
        stride = (chunk_f - 2 * overlap_f) * hop
        for start in range(0, n, stride):
            end = min(start + stride, n)
            lo, hi = max(0, start - overlap_f * hop), min(n, end + overlap_f * hop)
            m, s = (x.numpy() for x in vae.encode(audio[:, :, lo:hi]))
            first = (start - lo) // hop
            count = end // hop - start // hop
            ref_m.append(m[..., first : first + count])
            ref_s.append(s[..., first : first + count])
    assert mean.shape == scale.shape == (1, cfg.encoder_hidden_size // 2, n // hop) == full_mean.shape
    np.testing.assert_allclose(mean.numpy(), np.concatenate(ref_m, -1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(scale.numpy(), np.concatenate(ref_s, -1), rtol=0, atol=1e-6)
    # Short audio is encoded in one go.
    short = audio[:, :, : 8 * hop]
    with torch.no_grad():
        torch.testing.assert_close(tiled_encode(vae, short, 2, 0.25)[0], vae.encode(short)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="whole number"):
        tiled_encode(vae, audio, chunk_seconds=2, overlap_seconds=0.1)
    with pytest.raises(ValueError, match="must exceed"):
        tiled_encode(vae, audio, chunk_seconds=2, overlap_seconds=1)
