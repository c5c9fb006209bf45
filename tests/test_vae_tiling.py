"""The VAE decode's overlap-discard tiling with the decoder's exact context (runtime/postprocess.py), on the demo bundle."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import acestep_edge
from acestep_edge.runtime.postprocess import (
    OFFICIAL_OVERLAP,
    decoder_context_frames,
    exact_tile_overlap,
    tiled_decode,
)

MANIFEST = json.loads((acestep_edge.DEMO_BUNDLE / "manifest.json").read_text())
RATIOS = MANIFEST["model"]["vae"]["downsampling_ratios"]
HOP = MANIFEST["audio"]["hop_length"]


@pytest.fixture(scope="module")
def decode():
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(acestep_edge.DEMO_BUNDLE / "vae_decoder.onnx"), so,
                                   providers=["CPUExecutionProvider"])
    return lambda z: session.run(None, {"latents": z})[0]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_overlap_of_the_decoder_context_gives_the_untiled_decode(decode):
    latents = np.random.default_rng(0).standard_normal((1, 70, 64), dtype=np.float32)
    full = decode(np.ascontiguousarray(latents.transpose(0, 2, 1)))[0]
    context = decoder_context_frames(RATIOS)
    for overlap in (context, exact_tile_overlap(RATIOS)):
        tiled = tiled_decode(decode, latents, HOP, chunk=2 * overlap + 12, overlap=overlap)
        assert tiled.shape == full.shape
        assert _rel(tiled, full) < 1e-4, overlap  # fp32 rounding of other window sizes only
    # Less context than the decoder reads: the windows' zero padding reaches the kept samples.
    short = tiled_decode(decode, latents, HOP, chunk=16, overlap=2)
    assert _rel(short, full) > 1e-3


def test_exact_overlap_is_a_multiple_of_8_within_the_official_overlap():
    for ratios in (RATIOS, (2, 2), (4, 4, 4, 4, 4, 4)):
        overlap = exact_tile_overlap(ratios)
        assert overlap % 8 == 0 and overlap <= OFFICIAL_OVERLAP
        assert overlap >= decoder_context_frames(ratios) or overlap == OFFICIAL_OVERLAP
    # A finer last block reads more latent frames of context.
    assert decoder_context_frames((2, 2)) > decoder_context_frames((10, 10))
