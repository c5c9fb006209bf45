"""Shared fixtures: tiny random checkpoints written once per test session, through the real writer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the export extra (torch) is needed for model tests")


@pytest.fixture(scope="session")
def tiny_preset():
    from acestep_edge.models.config import tiny

    return tiny()


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory, tiny_preset):
    """A tiny fp32 checkpoint in the official layout (seed 7)."""
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("official")
    return write_random_checkpoint(root, tiny_preset, seed=7, layout="official", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_diffusers(tmp_path_factory, tiny_preset):
    """The same weights (seed 7) in the diffusers layout."""
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("diffusers")
    return write_random_checkpoint(root, tiny_preset, seed=7, layout="diffusers", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_diffusers):
    from acestep_edge.models.checkpoint import load_checkpoint

    return load_checkpoint(tiny_diffusers, layout="diffusers")


def rel_err(ours, theirs) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))
