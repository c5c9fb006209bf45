"""Adapters on the HTTP server: names inside --lora-dir only, GET /v1/loras, bad adapters → HTTP 400 naming them,
nothing rendered or written. Runs on the committed demo bundle (torch-free); adapters are written here."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from acestep_edge.runtime.pipeline import Pipeline
from lora_util import write_safetensors
from serverutil import DEMO_BUNDLE, LiveServer

pytestmark = pytest.mark.server




def _peft(folder, fin=64, fout=64, layer=0, module="self_attn.q_proj", r=4, b_rank=None, nan=False):
    rng = np.random.default_rng(0)
    key = f"base_model.model.layers.{layer}.{module}"
    a, b = rng.standard_normal((r, fin)) * 0.1, rng.standard_normal((fout, b_rank or r)) * 0.1
    if nan:
        a[0, 0] = np.nan
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": r}))
    write_safetensors(folder / "adapter_model.safetensors", {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b})


@pytest.fixture(scope="module")
def lora_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    loras, outside = root / "loras", root / "outside"
    loras.mkdir()
    outside.mkdir()
    _peft(loras / "style")
    rng = np.random.default_rng(1)
    write_safetensors(loras / "comfy.safetensors",
                      {"diffusion_model.layers.1.cross_attn.v_proj.lora_down.weight": rng.standard_normal((2, 64)),
                       "diffusion_model.layers.1.cross_attn.v_proj.lora_up.weight": rng.standard_normal((32, 2)),
                       "diffusion_model.layers.1.cross_attn.v_proj.alpha": np.array(2.0)},
                      {"trigger_words": "shimmer"})
    _peft(loras / "wide", fin=96, fout=96)
    _peft(loras / "unknown", module="self_attn.q_norm")
    _peft(loras / "ranks", b_rank=3)
    _peft(loras / "nan", nan=True)
    (loras / "old.bin").write_bytes(b"\x80\x04pickle")
    _peft(outside / "secret")
    (loras / "link").symlink_to(outside / "secret")
    return root, loras


@pytest.fixture(scope="module")
def server(lora_tree, tmp_path_factory):
    _, loras = lora_tree
    out = tmp_path_factory.mktemp("renders")
    live = LiveServer(Pipeline.load(DEMO_BUNDLE, threads=1), out, lora_dir=str(loras))
    yield live, out
    live.close()


def task(lora):
    return {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "adapter test",
            "duration": 10, "steps": 2, "outputFormat": "WAV", "lora": lora}


def test_lists_adapters_in_lora_dir(server):
    live, _ = server
    status, body, _ = live.request("GET", "/v1/loras")
    assert status == 200
    names = {e["name"]: e["kind"] for e in body["data"]}
    assert names["style"] == "folder" and names["comfy.safetensors"] == "file"
    assert "link" not in names  # a symlink out of the folder is not offered
    assert names["old.bin"].startswith("pickle")


def test_good_adapters_render_and_are_reported(server):
    live, _ = server
    status, body = live.post([task([{"model": "style", "weight": 0.5}, {"model": "comfy.safetensors"}])])
    assert status == 200, body
    (result,) = body["data"]
    assert [(e["model"], e["weight"], e["format"], e["rank"]) for e in result["lora"]] == \
        [("style", 0.5, "peft", 4), ("comfy.safetensors", 1.0, "comfyui", 2)]
    assert result["lora"][1]["targets"] == ["cross_attn.v_proj"] and result["lora"][1]["triggerWords"] == ["shimmer"]


@pytest.mark.parametrize("lora,param,fragments", [
    ([{"model": "wide"}], "lora[0].model", ["'wide'", "made for another model"]),
    ([{"model": "missing"}], "lora[0].model", ["'missing'", "no such adapter"]),
    ([{"model": "unknown"}], "lora[0].model", ["'unknown'", "self_attn.q_norm"]),
    ([{"model": "ranks"}], "lora[0].model", ["'ranks'", "mismatched ranks"]),
    ([{"model": "style"}, {"model": "nan"}], "lora[1].model", ["'nan'", "NaN or Inf"]),
    ([{"model": "style", "weight": 3}], "lora[0].weight", ["'style'", "out of range"]),
    ([{"model": "old.bin"}], "lora[0].model", ["'old.bin'", "pickle"]),
    ([{"model": "../outside/secret"}], "lora[0].model", ["outside the server's --lora-dir"]),
    ([{"model": "link"}], "lora[0].model", ["'link'", "outside the server's --lora-dir"]),
    ([{"model": "/etc"}], "lora[0].model", ["not a path or URI"]),
])
def test_bad_adapters_are_400_before_rendering(server, lora, param, fragments):
    live, out = server
    before = set(out.iterdir())
    status, body = live.post([task(lora)])
    assert status == 400, body
    (error,) = body["errors"]
    assert error["parameter"] == param, error
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    assert set(out.iterdir()) == before  # nothing written
