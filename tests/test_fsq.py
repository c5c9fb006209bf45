"""Our FSQ against vector-quantize-pytorch's ResidualFSQ, the library the official model uses."""

from __future__ import annotations

import pytest
import torch

vq = pytest.importorskip("vector_quantize_pytorch", reason="test-only dependency ([dev] extra)")

from acestep_edge.models.audio_tokens import FSQ  # noqa: E402

pytestmark = pytest.mark.export  # torch, onnx and the export side

LEVELS = (8, 8, 8, 5, 5, 5)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    theirs = vq.ResidualFSQ(dim=48, levels=list(LEVELS), num_quantizers=1).eval()
    ours = FSQ(48, LEVELS)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@torch.no_grad()
def test_quantize_matches_library(pair):
    ours, theirs = pair
    # Large inputs push many codes to the clamp edges, small ones sit mid-range.
    x = torch.cat([torch.randn(2, 50, 48) * s for s in (0.1, 1.0, 20.0)], dim=1)
    q, idx = ours(x)
    ref_q, ref_idx = theirs(x)
    assert torch.equal(idx, ref_idx[..., 0].to(torch.int64))
    assert torch.allclose(q, ref_q, rtol=0, atol=1e-5)
    assert idx.min() >= 0 and idx.max() < 8 * 8 * 8 * 5 * 5 * 5


@torch.no_grad()
def test_indices_round_trip_through_codebook(pair):
    ours, theirs = pair
    idx = torch.randint(0, 64000, (3, 17))
    ref = theirs.get_output_from_indices(idx[..., None])
    assert torch.allclose(ours.from_indices(idx), ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_out_of_range_codes_are_clamped(pair):
    ours, _ = pair
    assert torch.equal(ours.from_indices(torch.tensor([70000, -5])),
                       ours.from_indices(torch.tensor([63999, 0])))
