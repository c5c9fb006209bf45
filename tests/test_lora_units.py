"""Adapter reading without torch: LoKr's exact low-rank factors, key conventions, the safetensors reader,
scales, stacking into feeds, `--lora` parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acestep_edge.runtime.adapter_formats import AdapterError, load_adapter, lokr_factors, module_key
from acestep_edge.runtime.adapters import Adapters, LoraRef, cli_refs
from acestep_edge.runtime.request import RequestError
from acestep_edge.runtime.safetensors_io import load
from lora_util import write_safetensors




def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("form", ["w1_full_w2_factored", "both_full", "both_factored", "rank_above_dims"])
def test_lokr_factors_are_exact(form):
    g = _rng(1)
    if form == "w1_full_w2_factored":
        parts = {"lokr_w1": g.standard_normal((4, 2)), "lokr_w2_a": g.standard_normal((8, 3)),
                 "lokr_w2_b": g.standard_normal((3, 6)), "alpha": np.array(1.5)}
        w1, w2, scale = parts["lokr_w1"], parts["lokr_w2_a"] @ parts["lokr_w2_b"], 1.5 / 3
    elif form == "both_full":
        parts = {"lokr_w1": g.standard_normal((4, 4)), "lokr_w2": g.standard_normal((5, 3)), "alpha": np.array(9.0)}
        w1, w2, scale = parts["lokr_w1"], parts["lokr_w2"], 1.0  # LyCORIS ignores alpha when nothing is factorised
    elif form == "both_factored":
        parts = {"lokr_w1_a": g.standard_normal((4, 2)), "lokr_w1_b": g.standard_normal((2, 4)),
                 "lokr_w2_a": g.standard_normal((8, 2)), "lokr_w2_b": g.standard_normal((2, 8)), "alpha": np.array(1.0)}
        w1, w2, scale = parts["lokr_w1_a"] @ parts["lokr_w1_b"], parts["lokr_w2_a"] @ parts["lokr_w2_b"], 0.5
    else:  # factor ranks above the matrix dims: r1·r2 = 36 > min(out, in) = 9 → SVD at full rank
        parts = {"lokr_w1_a": g.standard_normal((3, 6)), "lokr_w1_b": g.standard_normal((6, 3)),
                 "lokr_w2_a": g.standard_normal((3, 6)), "lokr_w2_b": g.standard_normal((6, 3)), "alpha": np.array(6.0)}
        w1, w2, scale = parts["lokr_w1_a"] @ parts["lokr_w1_b"], parts["lokr_w2_a"] @ parts["lokr_w2_b"], 1.0
    parts = {k: np.asarray(v, np.float32) for k, v in parts.items()}
    a, b = lokr_factors("m", parts)
    want = scale * np.kron(w1, w2)
    if form == "rank_above_dims":
        assert a.shape[0] == b.shape[1] == min(want.shape)  # never more rank than the matrix has
    np.testing.assert_allclose(b.astype(np.float64) @ a, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_lokr_tucker_and_dora_are_refused(tmp_path):
    f = write_safetensors(tmp_path / "t.safetensors",
                          {"lycoris_layers_0_self_attn_q_proj.lokr_w1": np.ones((2, 2)),
                           "lycoris_layers_0_self_attn_q_proj.lokr_w2": np.ones((2, 2)),
                           "lycoris_layers_0_self_attn_q_proj.lokr_t2": np.ones((2, 2, 1, 1))})
    with pytest.raises(AdapterError, match="Tucker"):
        load_adapter(f)


@pytest.mark.parametrize("key,want", [
    ("base_model.model.layers.3.self_attn.q_proj", (3, "self_attn.q_proj")),
    ("diffusion_model.layers.0.cross_attn.o_proj", (0, "cross_attn.o_proj")),
    ("transformer.layers.2.cross_attn.to_out.0", (2, "cross_attn.o_proj")),
    ("transformer.layers.2.self_attn.to_k", (2, "self_attn.k_proj")),
    ("decoder.layers.1.mlp.down_proj", (1, "mlp.down_proj")),
    ("base_model.model.proj_in.1", None),
    ("layers.0.self_attn.q_norm", None),
    ("encoder.lyric_encoder.layers.0.self_attn.q_proj", None),
])
def test_module_keys(key, want):
    assert module_key(key) == want


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_safetensors_reader_dtypes(tmp_path, dtype):
    x = np.array([[1.0, -2.5, 0.15625], [3.0, 0.0, -0.5]], np.float32)  # exact in bf16 and fp16
    tensors, meta = load(write_safetensors(tmp_path / "x.safetensors", {"x": x}, {"k": "v"}, dtype))
    assert meta == {"k": "v"} and tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"], x)


def test_truncated_file_is_refused(tmp_path):
    f = write_safetensors(tmp_path / "x.safetensors", {"x": np.ones((4, 4))})
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(AdapterError, match="truncated"):
        load_adapter(f)


def _kinds_graph(layers=2, d=8):
    inputs = []
    for kind, (fin, fout) in {"self_attn.q_proj": (d, d), "self_attn.k_proj": (d, 4)}.items():
        inputs += [{"name": f"lora_a.{kind}", "shape": [layers, "r", fin]},
                   {"name": f"lora_b.{kind}", "shape": [layers, fout, "r"]}]
    return {"inputs": inputs}


def test_feeds_scale_stack_and_pad(tmp_path):
    g = _rng(2)
    a1, b1 = g.standard_normal((2, 8)), g.standard_normal((8, 2))
    a2, b2 = g.standard_normal((3, 8)), g.standard_normal((8, 3))
    one = tmp_path / "one"
    one.mkdir()
    (one / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "use_rslora": True}))
    write_safetensors(one / "adapter_model.safetensors",
                      {"base_model.model.layers.1.self_attn.q_proj.lora_A.weight": a1,
                       "base_model.model.layers.1.self_attn.q_proj.lora_B.weight": b1})
    two = write_safetensors(tmp_path / "two.safetensors",
                            {"diffusion_model.layers.0.self_attn.q_proj.lora_down.weight": a2,
                             "diffusion_model.layers.0.self_attn.q_proj.lora_up.weight": b2,
                             "diffusion_model.layers.0.self_attn.q_proj.alpha": np.array(6.0)})
    adapters = Adapters(_kinds_graph())
    feeds = adapters.resolve((LoraRef(str(one), 0.5), LoraRef(str(two), -1.0))).feeds
    a, b = feeds["lora_a.self_attn.q_proj"], feeds["lora_b.self_attn.q_proj"]
    assert a.shape == (2, 5, 8) and b.shape == (2, 8, 5)
    delta1 = b[1] @ a[1]
    delta0 = b[0] @ a[0]
    np.testing.assert_allclose(delta1, 0.5 * (4 / np.sqrt(2)) * b1 @ a1, rtol=1e-5, atol=1e-5)  # rsLoRA
    np.testing.assert_allclose(delta0, -1.0 * (6 / 3) * b2 @ a2, rtol=1e-5, atol=1e-5)  # ComfyUI alpha
    assert feeds["lora_a.self_attn.k_proj"].shape == (2, 1, 8) and not feeds["lora_b.self_attn.k_proj"].any()
    assert adapters.base().feeds["lora_a.self_attn.q_proj"].shape == (2, 1, 8)


def test_trigger_words_from_sidecar_and_metadata(tmp_path):
    f = write_safetensors(tmp_path / "style.safetensors",
                          {"layers.0.self_attn.q_proj.lora_A.weight": np.ones((1, 8)),
                           "layers.0.self_attn.q_proj.lora_B.weight": np.ones((8, 1))},
                          {"trigger_words": '["lofi", "tape"]'})
    (tmp_path / "style.json").write_text(json.dumps({"triggerWords": ["tape", "warm"]}))
    assert load_adapter(f).trigger_words == ["lofi", "tape", "warm"]


@pytest.mark.parametrize("option,want", [("a/b", ("a/b", 1.0)), ("a/b=0.25", ("a/b", 0.25)),
                                         ("x=y/z", ("x=y/z", 1.0)), ("p=-2", ("p", -2.0))])
def test_cli_lora_option(option, want):
    (ref,) = cli_refs((option,))
    assert (ref.model, ref.weight) == want


def test_cli_lora_weight_out_of_range():
    with pytest.raises(RequestError, match="out of range") as info:
        cli_refs(("a=2.5",))
    assert info.value.parameter == "--lora"
