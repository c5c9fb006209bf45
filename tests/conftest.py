"""Shared fixtures (built once per session) and the layer rule: a module marked for an extra is not imported when deselected."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

LAYERS = ("export", "server", "fleet")
_MODULE_MARK = re.compile(r"^pytestmark\s*=\s*(.+)$", re.MULTILINE)
_IDENT = re.compile(r"[A-Za-z_][\w.-]*")


def _module_layers(path: Path) -> set[str]:
    """The layer markers a test module declares in its `pytestmark = ...` line, read without importing it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return set()
    found = set()
    for match in _MODULE_MARK.finditer(text):
        found.update(re.findall(r"pytest\.mark\.(\w+)", match.group(1)))
    return found & set(LAYERS)


def _never_selected(markexpr: str, layers: set[str]) -> bool:
    """True when `-m markexpr` deselects every test carrying `layers`, whatever other marks the tests have."""
    try:
        from _pytest.mark.expression import Expression  # pytest's own `-m` evaluator

        expr = Expression.compile(markexpr)
    except Exception:  # an unknown pytest internals layout: fall back to importing the module
        return False
    others = sorted({n for n in _IDENT.findall(markexpr) if n not in {"and", "or", "not"}} - layers)
    for values in itertools.product((False, True), repeat=len(others)):
        marks = layers | {n for n, v in zip(others, values) if v}
        if expr.evaluate(lambda name, /, **kwargs: name in marks):
            return False
    return True


def pytest_ignore_collect(collection_path: Path, config):
    """Deselected by its marker means never imported: a base install has no torch for an export module's imports."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    markexpr = config.option.markexpr
    layers = _module_layers(collection_path)
    if markexpr and layers and _never_selected(markexpr, layers):
        return True
    return None


# -- the committed demo bundle (torch-free) ----------------------------------------------------

@pytest.fixture(scope="session")
def demo_bundle() -> Path:
    import acestep_edge

    return acestep_edge.DEMO_BUNDLE


@pytest.fixture(scope="session")
def demo_pipeline(demo_bundle):
    """One Pipeline on the demo bundle for the whole session (its sessions are stateless between renders)."""
    from acestep_edge.runtime.pipeline import Pipeline

    return Pipeline.load(demo_bundle, threads=1)


# -- tiny random checkpoints and the bundle exported from them (export layer) -----------------

@pytest.fixture(scope="session")
def tiny_preset():
    from acestep_edge.models.config import tiny

    return tiny()


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory, tiny_preset):
    """A tiny fp32 checkpoint in the official layout (seed 7)."""
    import torch

    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("official")
    return write_random_checkpoint(root, tiny_preset, seed=7, layout="official", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_diffusers(tmp_path_factory, tiny_preset):
    """The same weights (seed 7) in the diffusers layout."""
    import torch

    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("diffusers")
    return write_random_checkpoint(root, tiny_preset, seed=7, layout="diffusers", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_diffusers):
    from acestep_edge.models.checkpoint import load_checkpoint

    return load_checkpoint(tiny_diffusers, layout="diffusers")


@pytest.fixture(scope="session")
def tiny_fp32_bundle(tiny_official, tmp_path_factory) -> Path:
    """Every graph of the tiny checkpoint exported once in fp32 with the default ops, parity measured.

    Shared by the export, runtime-parity and precision tests: treat it as read-only (copy it to damage it).
    """
    from acestep_edge.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("tiny_fp32") / "bundle"
    return export_bundle(tiny_official, out, layout="official", ops="standard", parity=True)


def rel_err(ours, theirs) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))
