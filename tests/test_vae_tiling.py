"""The VAE decode's overlap-discard tiling with the decoder's exact context (runtime/postprocess.py), on the demo bundle."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import onnxruntime as ort
import pytest

import acestep_edge
from acestep_edge.runtime.postprocess import (
    OFFICIAL_OVERLAP,
    decoder_context_frames,
    exact_tile_overlap,
    tile_windows,
    tiled_decode,
    worker_windows,
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


# -- windows decoded at once (SessionOptions.vae_workers) -------------------------------------------------


@pytest.mark.parametrize("length", [1, 40, 150, 700, 15000])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_worker_windows_cover_the_clip_in_order_within_the_memory_of_one_chunk(length, workers):
    chunk, overlap = 512, 16
    windows = worker_windows(length, chunk, overlap, workers)
    assert windows[0][2] == 0 and windows[-1][3] == length
    assert all(a[3] == b[2] for a, b in zip(windows, windows[1:]))  # cores tile the clip, in order
    assert all(ws == max(0, cs - overlap) and we == min(length, ce + overlap) for ws, we, cs, ce in windows)
    if workers == 1:
        assert windows == tile_windows(length, chunk, overlap)
    else:
        assert all(ce - cs <= max(chunk // workers, 16) for _, _, cs, ce in windows)
        assert sum(we - ws for ws, we, _, _ in windows[:workers]) <= chunk + 2 * workers * overlap
        if length >= workers * (overlap + 16):  # every worker gets a window, short clips included
            assert len(windows) >= workers


def test_windows_are_decoded_at_once_and_progress_stays_on_the_calling_thread():
    """Two workers: both windows must be in `decode` together (a barrier for two would time out if they ran one
    after the other), and progress is reported from the caller's thread, in window order."""
    barrier, caller, seen = threading.Barrier(2, timeout=10), threading.get_ident(), []

    def decode(z):
        barrier.wait()
        return np.repeat(z[:, :2], HOP, axis=-1)  # [1, 2, frames·hop], frame values kept

    latents = np.arange(2 * 64 * 120, dtype=np.float32).reshape(1, 120, 128)[:, :, :64]
    audio = tiled_decode(decode, latents, HOP, chunk=200, overlap=16,
                         progress=lambda done, n: seen.append((done, n, threading.get_ident())), workers=2)
    np.testing.assert_array_equal(audio, np.repeat(latents[0, :, :2].T, HOP, axis=-1))
    assert [(d, n) for d, n, _ in seen] == [(0, 2), (1, 2), (2, 2)] and {t for *_, t in seen} == {caller}


def test_a_failing_window_stops_the_queued_ones():
    calls = []

    def decode(z):
        calls.append(z.shape[-1])
        raise RuntimeError("decoder failed")

    latents = np.zeros((1, 2000, 64), np.float32)
    with pytest.raises(RuntimeError, match="decoder failed"):
        tiled_decode(decode, latents, HOP, chunk=128, overlap=16, workers=2)
    assert len(calls) < len(worker_windows(2000, 128, 16, 2))


def test_render_is_the_same_with_one_or_two_vae_workers():
    """The demo request rendered with the decode's windows one at a time and two at once: the same audio (the
    exact overlap makes every window size give the untiled decode, up to fp32 rounding)."""
    from acestep_edge.runtime.bundle import Bundle, SessionOptions
    from acestep_edge.runtime.pipeline import Pipeline

    request = dict(json.loads(acestep_edge.DEMO_REQUEST.read_text()), steps=2, duration=12)
    out = {}
    for workers in (1, 2):
        bundle = Bundle(acestep_edge.DEMO_BUNDLE, SessionOptions(threads=2, vae_workers=workers))
        assert bundle.vae_workers == workers
        out[workers] = Pipeline(bundle).generate(request).audio
    assert out[1].shape == out[2].shape and np.abs(out[1]).max() > 0
    assert _rel(out[2], out[1]) < 1e-4


def test_vae_workers_default_and_validation(tmp_path):
    from acestep_edge.runtime.bundle import Bundle, SessionOptions

    def workers(bundle=acestep_edge.DEMO_BUNDLE, **kw):
        return Bundle(bundle, SessionOptions(**kw)).vae_workers

    assert MANIFEST["sampler_defaults"]["vae_overlap"] == 16  # the exporter's exact overlap
    assert workers(threads=1) == 1 and workers(threads=2) == 2 and workers(threads=8) == 2
    assert workers(threads=8, vae_workers=4) == 4
    assert workers(provider="cuda", threads=8) == 1  # one device: the windows would only queue on it
    # A bundle with the official 64-frame overlap: two half windows would cost more context than the second
    # core saves, so it decodes one window at a time unless told.
    old = tmp_path / "old"
    shutil.copytree(acestep_edge.DEMO_BUNDLE, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["sampler_defaults"]["vae_overlap"] = OFFICIAL_OVERLAP
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert workers(old, threads=2) == 1 and workers(old, threads=2, vae_workers=2) == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="vae_workers"):
            SessionOptions(vae_workers=bad)
