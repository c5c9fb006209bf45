"""export/fuse.py: shared-input MatMul fusion gives the same DiT outputs, in both exporter weight forms, lazily."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
ir = pytest.importorskip("onnx_ir")

pytestmark = pytest.mark.export  # torch, onnx and the export side


def _matmuls(model) -> int:
    return sum(1 for n in model.graph if n.op_type == "MatMul")


def test_fused_dit_matches_unfused(tmp_path, tiny_preset):
    from acestep_edge.export.fuse import fuse_shared_input_matmuls
    from acestep_edge.export.graphs import DiTGraph, example_sizes, graph_specs
    from acestep_edge.export.onnx_export import export_program
    from acestep_edge.models.acestep import AceStepModel
    from acestep_edge.models.random_checkpoint import random_tensor

    model = AceStepModel(tiny_preset.dit)
    model.load_state_dict({k: random_tensor(k, tuple(v.shape), 3) for k, v in model.state_dict().items()})
    spec = graph_specs(tiny_preset, "none")["dit"]  # DiTGraph below has no adapter side paths
    # optimize=False keeps the XL meta path's Transpose(W) weight form; the folded form is covered below.
    program = export_program(spec, DiTGraph(model.eval()), tiny_preset, "standard", optimize=False)
    ir.save(program.model, tmp_path / "plain.onnx")
    before = _matmuls(program.model)
    groups = fuse_shared_input_matmuls(program.model)
    ir.save(program.model, tmp_path / "fused.onnx")

    layers = tiny_preset.dit.num_hidden_layers
    # Per layer q/k/v → 1 and gate/up → 1; every layer's cross-attention k/v read the same embedded
    # condition, so all 2·layers of them become one MatMul.
    assert groups == 2 * layers + 1
    assert _matmuls(program.model) == before - (2 * layers + layers + 2 * layers - 1)
    fused_nodes = [n for n in program.model.graph if n.op_type == "MatMul" and "acestep_edge.fused_from" in n.metadata_props]
    assert len(fused_nodes) == groups
    # The torch name scope survives, so precision passes that select block linears by it still apply.
    assert all("layers." in n.metadata_props.get("pkg.torch.onnx.name_scopes", "") for n in fused_nodes)

    args = spec.example(example_sizes(), tiny_preset, torch.Generator().manual_seed(1))
    feed = {i.name: a.numpy() for i, a in zip(spec.inputs, args)}
    plain, fused = (ort.InferenceSession(str(tmp_path / f)).run(None, feed)[0] for f in ("plain.onnx", "fused.onnx"))
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())


def _lazy(name, array, reads):
    def read():
        reads.append(name)
        return ir.tensor(array, name=name)

    return ir.LazyTensor(read, dtype=ir.DataType.FLOAT, shape=ir.Shape(array.shape), name=name)


def _two_linears(weights, reads, transposed: bool):
    """x [2, 3, 4] → MatMul by each weight (optionally through Transpose(W[N, K])) → Concat of the outputs."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3, 4]))
    nodes, outs, inits = [], [], []
    for i, w in enumerate(weights):
        stored = w.T.copy() if transposed else w
        init = ir.Value(name=f"w{i}", const_value=_lazy(f"w{i}", stored, reads), shape=ir.Shape(stored.shape),
                        type=ir.TensorType(ir.DataType.FLOAT))
        inits.append(init)
        b = init
        if transposed:
            t = ir.node("Transpose", [init], {"perm": [1, 0]})
            nodes.append(t)
            b = t.outputs[0]
        mm = ir.node("MatMul", [x, b])
        nodes.append(mm)
        outs.append(mm.outputs[0])
    cat = ir.node("Concat", outs, {"axis": -1})
    nodes.append(cat)
    cat.outputs[0].name = "y"
    cat.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], cat.outputs, nodes=nodes, initializers=inits, opset_imports={"": 23})
    return ir.Model(graph, ir_version=10)


@pytest.mark.parametrize("transposed", [False, True])
def test_fused_weight_is_read_only_when_saved(tmp_path, transposed):
    from acestep_edge.export.fuse import fuse_shared_input_matmuls

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((4, n)).astype(np.float32) for n in (5, 2)]
    reads: list[str] = []
    model = _two_linears(weights, reads, transposed)
    assert fuse_shared_input_matmuls(model) == 1
    assert reads == []  # fusing concatenates nothing yet
    assert sorted(model.graph.initializers) != ["w0", "w1"] and "w0" not in model.graph.initializers
    ir.save(model, tmp_path / "m.onnx", external_data="m.onnx.data", size_threshold_bytes=64)
    assert sorted(reads) == ["w0", "w1"]  # each source read once, while saving

    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.concatenate([x @ w for w in weights], axis=-1), rtol=1e-5, atol=1e-6)


def test_weight_used_twice_is_not_fused():
    from acestep_edge.export.fuse import fuse_shared_input_matmuls

    rng = np.random.default_rng(0)
    reads: list[str] = []
    model = _two_linears([rng.standard_normal((4, 5)).astype(np.float32)] * 2, reads, transposed=False)
    # Make both MatMuls read the same initializer: concatenating it would duplicate a shared tensor.
    first, second = [n for n in model.graph if n.op_type == "MatMul"]
    second.replace_input_with(1, first.inputs[1])
    assert fuse_shared_input_matmuls(model) == 0
