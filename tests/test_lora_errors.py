"""Bad adapters through the CLI: each is a Runware error naming the adapter and the problem, exit code 2,
refused before any render, no file written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lora_util import request

pytestmark = pytest.mark.export

Q = "base_model.model.layers.0.self_attn.q_proj"


def _peft_dir(path, tensors: dict, r=4, alpha=4):
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "peft_type": "LORA",
                                                          "target_modules": ["q_proj"]}))
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              str(path / "adapter_model.safetensors"))
    return path


def _good(r=4, fin=64, fout=64, layer=0, module="self_attn.q_proj"):
    rng = np.random.default_rng(0)
    key = f"base_model.model.layers.{layer}.{module}"
    return {f"{key}.lora_A.weight": rng.standard_normal((r, fin)), f"{key}.lora_B.weight": rng.standard_normal((fout, r))}


def _case(name, tmp):
    """(--lora value, request lora field or None, expected message fragments)."""
    if name == "wrong_model":  # an adapter for a wider DiT (the XL-vs-2B situation at tiny scale)
        p = _peft_dir(tmp / "wide", _good(fin=96, fout=96))
        return str(p), ["made for another model", "self_attn.q_proj maps 64 → 64"]
    if name == "too_many_layers":
        p = _peft_dir(tmp / "deep", _good(layer=7))
        return str(p), ["layers.7", "4 layers", "made for another model"]
    if name == "missing":
        return str(tmp / "nowhere"), ["does not exist"]
    if name == "unknown_keys":
        t = _good()
        t["base_model.model.proj_in.1.lora_A.weight"] = np.ones((4, 128))
        t["base_model.model.proj_in.1.lora_B.weight"] = np.ones((64, 4))
        t["base_model.model.condition_embedder.lora_A.weight"] = np.ones((4, 48))
        t["base_model.model.condition_embedder.lora_B.weight"] = np.ones((64, 4))
        p = _peft_dir(tmp / "unknown", t)
        return str(p), ["target no DiT attention/MLP projection", "proj_in.1", "condition_embedder"]
    if name == "mismatched_ranks":
        t = _good()
        t[f"{Q}.lora_B.weight"] = np.ones((64, 3))
        p = _peft_dir(tmp / "ranks", t)
        return str(p), ["mismatched ranks", "[4, 64]", "[64, 3]"]
    if name == "nan":
        t = _good()
        t[f"{Q}.lora_A.weight"][1, 2] = np.nan
        p = _peft_dir(tmp / "nan", t)
        return str(p), ["NaN or Inf"]
    if name == "inf":
        t = _good()
        t[f"{Q}.lora_B.weight"][0, 0] = np.inf
        p = _peft_dir(tmp / "inf", t)
        return str(p), ["NaN or Inf"]
    if name == "weight":
        p = _peft_dir(tmp / "ok", _good())
        return f"{p}=2.5", ["2.5 is out of range", "-2 to 2"]
    if name == "pickle":
        p = tmp / "adapter.bin"
        p.write_bytes(b"\x80\x04not really")
        return str(p), ["pickle", "safetensors"]
    if name == "mlp_on_attention_bundle":
        p = _peft_dir(tmp / "mlp", _good(module="mlp.gate_proj", fout=128))
        return str(p), ["mlp.gate_proj", "--adapter-targets attention+mlp"]
    raise KeyError(name)


CASES = ["wrong_model", "too_many_layers", "missing", "unknown_keys", "mismatched_ranks", "nan", "inf", "weight",
         "pickle", "mlp_on_attention_bundle"]


@pytest.fixture(scope="module")
def bundle(tiny_official, tmp_path_factory):
    from acestep_edge.export.bundle import export_bundle

    return export_bundle(tiny_official, tmp_path_factory.mktemp("lora_err") / "b",
                         graphs=["text_encoder", "condition_encoder", "dit", "vae_decoder"], parity=False)


def _generate(bundle, tmp_path, body, *extra):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", "-", "--bundle", str(bundle),
                           "--out", str(out), "--threads", "1", *extra], input=json.dumps(body),
                          capture_output=True, text=True, timeout=300)
    return proc, out


@pytest.mark.parametrize("name", CASES)
def test_bad_adapter_via_cli_option(bundle, tmp_path, name):
    value, fragments = _case(name, tmp_path)
    proc, out = _generate(bundle, tmp_path, request(steps=2), "--lora", value)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = json.loads(proc.stdout)["errors"]
    assert error["parameter"].startswith(("lora", "--lora")), error
    if name != "weight":
        assert value.split("=")[0] in error["message"], error  # the adapter is named
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    assert list(out.iterdir()) == []


def test_bad_adapter_in_request_field_names_entry(bundle, tmp_path):
    """The request's own `lora` list: a good first adapter and a broken second one → error on lora[1], no file;
    a batch of two requests whose second has the bad adapter renders neither."""
    good = _peft_dir(tmp_path / "good", _good())
    bad, _ = _case("nan", tmp_path)
    body = request(steps=2, lora=[{"model": str(good), "weight": 0.5}, {"model": bad, "weight": 1}])
    proc, out = _generate(bundle, tmp_path, [request(steps=2), body])
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = json.loads(proc.stdout)["errors"]
    assert error["parameter"] == "lora[1].model" and "NaN or Inf" in error["message"] and bad in error["message"]
    assert error["taskUUID"] == body["taskUUID"]
    assert list(out.iterdir()) == []


def test_good_adapter_via_cli_reports_it(bundle, tmp_path):
    good = _peft_dir(tmp_path / "good", _good())
    (good / "metadata.json").write_text(json.dumps({"trigger_words": ["synthwave"]}))
    proc, out = _generate(bundle, tmp_path, request(steps=2), "--lora", f"{good}=0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    response = json.loads(proc.stdout)
    assert response["lora"] == [{"model": str(good), "weight": 0.5, "format": "peft", "rank": 4,
                                 "targets": ["self_attn.q_proj"], "triggerWords": ["synthwave"]}]
    assert len(list(out.iterdir())) == 1


@pytest.mark.parametrize("value,message", [("x", "expected a list"), ([{"weight": 1}], "lora[0].model"),
                                           ([{"model": "a", "weight": "1"}], "expected a number"),
                                           ([{"model": "a", "scale": 1}], "lora[0].scale")])
def test_lora_field_shape_is_validated(value, message):
    from acestep_edge.runtime.request import RequestError, parse_request

    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_request(request(lora=value))
