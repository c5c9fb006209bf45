"""A DiT with the XL window (±128) exported once runs at other lengths: the trace must not fix T.

Covers the full-attention lowerings too: ``standard`` with the default (``auto`` → chunked Scan)
and with the fused ``Attention`` op, and ``plain`` (fused MatMul/Softmax by default).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from acestep_edge.export.graphs import graph_specs
from acestep_edge.export.onnx_export import export_program, save_program
from acestep_edge.models.acestep import AceStepModel
from acestep_edge.models.config import tiny
from acestep_edge.models.random_checkpoint import random_tensor

ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.export  # torch, onnx and the export side


# (ops, --full-attention) → (Scan present, Attention present) in the DiT graph. Under `standard` the
# sliding-window layers are a Scan over query blocks whatever the full-attention form; `plain` keeps
# both in their loop-free forms.
EXPECTED = {("standard", "auto"): (True, False), ("standard", "fused"): (True, True), ("plain", "auto"): (False, False)}


@pytest.mark.parametrize("ops, full_attention", [("standard", "auto"), ("standard", "fused"), ("plain", "auto")])
@torch.no_grad()
def test_window_128_dit_runs_at_untraced_lengths(tmp_path, ops, full_attention):
    preset = tiny()
    preset = dataclasses.replace(preset, dit=dataclasses.replace(preset.dit, sliding_window=128))
    model = AceStepModel(preset.dit)
    model.load_state_dict({k: random_tensor(k, tuple(v.shape), seed=5) for k, v in model.state_dict().items()})
    spec = graph_specs(preset, "none")["dit"]  # the bare DiT contract: no adapter inputs
    graph = spec.build(type("Ck", (), {"acestep": model})())
    path = tmp_path / "dit.onnx"
    save_program(export_program(spec, graph, preset, ops=ops, full_attention=full_attention), path)
    proto = onnx.load(str(path), load_external_data=False)
    types = {n.op_type for n in proto.graph.node}
    assert ("Scan" in types, "Attention" in types) == EXPECTED[ops, full_attention], types
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["acestep.ops"] == ops and meta["acestep.full_attention"] == full_attention
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for frames in (3, 37, 600, 1201):  # 600 frames = 300 tokens: more than two ±128 blocks
        x, src = torch.randn(2, frames, 64, generator=g), torch.randn(2, frames, 64, generator=g)
        t = torch.tensor([0.7, 0.2])
        enc = torch.randn(2, 9, preset.dit.encoder_hidden_size, generator=g)
        mask = torch.ones(2, frames)
        want = graph(x, t, enc, src, mask)
        (got,) = session.run(None, {"x": x.numpy(), "t": t.numpy(), "encoder_states": enc.numpy(),
                                    "src_latents": src.numpy(), "chunk_mask": mask.numpy()})
        err = np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max()
        assert err <= 1e-4, (frames, err)
