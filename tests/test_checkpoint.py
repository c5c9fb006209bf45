"""Checkpoint layouts: XL structure and counts, bit-identical round trips, clear errors for wrong checkpoints."""

from __future__ import annotations

import re

import pytest
import torch

from acestep_edge.models.acestep import AceStepModel
from acestep_edge.models.checkpoint import CheckpointError, load_checkpoint
from acestep_edge.models.config import xl_base
from acestep_edge.models.random_checkpoint import random_tensor

pytestmark = pytest.mark.export  # torch, onnx and the export side

# The official module tree (ace-step/ACE-Step-1.5 acestep/models/xl_base/modeling_acestep_v15_xl_base.py),
# written out by hand: every key pattern of the XL DiT checkpoint with its shape.
L, E = r"\d+", r"\d+"
XL_TREE = {
    r"null_condition_emb": (1, 1, 2048),
    r"decoder\.proj_in\.1\.weight": (2560, 192, 2),
    r"decoder\.proj_in\.1\.bias": (2560,),
    r"decoder\.time_embed(_r)?\.linear_1\.weight": (2560, 256),
    r"decoder\.time_embed(_r)?\.linear_1\.bias": (2560,),
    r"decoder\.time_embed(_r)?\.linear_2\.weight": (2560, 2560),
    r"decoder\.time_embed(_r)?\.linear_2\.bias": (2560,),
    r"decoder\.time_embed(_r)?\.time_proj\.weight": (15360, 2560),
    r"decoder\.time_embed(_r)?\.time_proj\.bias": (15360,),
    r"decoder\.condition_embedder\.weight": (2560, 2048),
    r"decoder\.condition_embedder\.bias": (2560,),
    rf"decoder\.layers\.{L}\.scale_shift_table": (1, 6, 2560),
    rf"decoder\.layers\.{L}\.(self_attn|cross_attn|mlp)_norm\.weight": (2560,),
    rf"decoder\.layers\.{L}\.(self_attn|cross_attn)\.q_proj\.weight": (4096, 2560),
    rf"decoder\.layers\.{L}\.(self_attn|cross_attn)\.[kv]_proj\.weight": (1024, 2560),
    rf"decoder\.layers\.{L}\.(self_attn|cross_attn)\.o_proj\.weight": (2560, 4096),
    rf"decoder\.layers\.{L}\.(self_attn|cross_attn)\.[qk]_norm\.weight": (128,),
    rf"decoder\.layers\.{L}\.mlp\.(gate|up)_proj\.weight": (9728, 2560),
    rf"decoder\.layers\.{L}\.mlp\.down_proj\.weight": (2560, 9728),
    r"decoder\.norm_out\.weight": (2560,),
    r"decoder\.scale_shift_table": (1, 2, 2560),
    r"decoder\.proj_out\.1\.weight": (2560, 64, 2),
    r"decoder\.proj_out\.1\.bias": (64,),
    r"encoder\.text_projector\.weight": (2048, 1024),
    r"encoder\.lyric_encoder\.embed_tokens\.weight": (2048, 1024),
    r"encoder\.timbre_encoder\.embed_tokens\.weight": (2048, 64),
    r"encoder\.(lyric|timbre)_encoder\.embed_tokens\.bias": (2048,),
    r"encoder\.timbre_encoder\.special_token": (1, 1, 2048),
    r"tokenizer\.audio_acoustic_proj\.weight": (2048, 64),
    r"tokenizer\.audio_acoustic_proj\.bias": (2048,),
    r"tokenizer\.attention_pooler\.embed_tokens\.weight": (2048, 2048),
    r"tokenizer\.attention_pooler\.embed_tokens\.bias": (2048,),
    r"tokenizer\.attention_pooler\.special_token": (1, 1, 2048),
    r"tokenizer\.quantizer\.project_in\.weight": (6, 2048),
    r"tokenizer\.quantizer\.project_in\.bias": (6,),
    r"tokenizer\.quantizer\.project_out\.weight": (2048, 6),
    r"tokenizer\.quantizer\.project_out\.bias": (2048,),
    r"detokenizer\.embed_tokens\.weight": (2048, 2048),
    r"detokenizer\.embed_tokens\.bias": (2048,),
    r"detokenizer\.special_tokens": (1, 5, 2048),
    r"detokenizer\.proj_out\.weight": (64, 2048),
    r"detokenizer\.proj_out\.bias": (64,),
    # encoder-layer shapes, shared by lyric/timbre encoders, attention pooler and detokenizer
    r"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.norm\.weight": (2048,),
    rf"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.layers\.{E}\."
    r"(input_layernorm|post_attention_layernorm)\.weight": (2048,),
    rf"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.layers\.{E}\.self_attn\.q_proj\.weight": (2048, 2048),
    rf"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.layers\.{E}\.self_attn\.[kv]_proj\.weight": (1024, 2048),
    rf"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.layers\.{E}\.self_attn\.o_proj\.weight": (2048, 2048),
    rf"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.layers\.{E}\.self_attn\.[qk]_norm\.weight": (128,),
    rf"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.layers\.{E}\.mlp\.(gate|up)_proj\.weight": (6144, 2048),
    rf"(encoder\.(lyric|timbre)_encoder|tokenizer\.attention_pooler|detokenizer)\.layers\.{E}\.mlp\.down_proj\.weight": (2048, 6144),
}
LAYER_COUNTS = {"decoder.layers": 32, "encoder.lyric_encoder.layers": 8, "encoder.timbre_encoder.layers": 4,
                "tokenizer.attention_pooler.layers": 2, "detokenizer.layers": 2}


@pytest.fixture(scope="module")
def xl_meta():
    with torch.device("meta"):
        return AceStepModel(xl_base().dit)


def test_xl_parameter_counts_match_spec(xl_meta):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(xl_meta.decoder) == 4_168_897_088
    assert count(xl_meta.encoder) == 608_367_616
    assert count(xl_meta.tokenizer) == 105_032_198
    assert count(xl_meta.detokenizer) == 105_011_776
    assert xl_meta.null_condition_emb.numel() == 2048


def test_xl_state_dict_is_spec_tree(xl_meta):
    state = xl_meta.state_dict()
    unmatched = []
    used = set()
    for key, tensor in state.items():
        hits = [p for p in XL_TREE if re.fullmatch(p, key)]
        if len(hits) != 1:
            unmatched.append((key, hits))
            continue
        used.add(hits[0])
        assert tuple(tensor.shape) == XL_TREE[hits[0]], key
    assert not unmatched, unmatched[:5]
    assert used == set(XL_TREE), set(XL_TREE) - used
    for prefix, n in LAYER_COUNTS.items():
        indices = {int(k[len(prefix) + 1:].split(".")[0]) for k in state if k.startswith(prefix + ".")}
        assert indices == set(range(n)), prefix


def test_official_checkpoint_loads_bit_identically(tiny_official, tiny_preset):
    loaded = load_checkpoint(tiny_official, layout="auto")
    assert loaded.layout == "official"
    for module, prefix in ((loaded.acestep, ""), (loaded.text_encoder, "text_encoder."), (loaded.vae, "vae.")):
        for name, tensor in module.state_dict().items():
            expected = random_tensor(prefix + name, tuple(tensor.shape), seed=7)
            assert torch.equal(tensor, expected), name
    assert loaded.silence_latent.shape == (1, 15000, 64)
    assert loaded.preset.dit == tiny_preset.dit


def test_diffusers_layout_loads_the_same_weights(tiny_official, tiny_diffusers):
    a = load_checkpoint(tiny_official)
    b = load_checkpoint(tiny_diffusers)
    assert b.layout == "diffusers"
    assert a.preset.dit == b.preset.dit
    for x, y in ((a.acestep, b.acestep), (a.text_encoder, b.text_encoder), (a.vae, b.vae)):
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys()
        assert all(torch.equal(sx[k], sy[k]) for k in sx)
    assert torch.equal(a.silence_latent, b.silence_latent)


def test_bf16_checkpoint_loads_into_requested_dtype(tmp_path, tiny_preset):
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = write_random_checkpoint(tmp_path, tiny_preset, seed=1, dtype=torch.bfloat16)
    loaded = load_checkpoint(root, dtype=torch.float32, components=("acestep",))
    w = loaded.acestep.decoder.proj_in["1"].weight
    assert w.dtype == torch.float32 and w.device.type == "cpu"
    expected = random_tensor("decoder.proj_in.1.weight", tuple(w.shape), seed=1).to(torch.bfloat16).float()
    assert torch.equal(w, expected)


def test_sharded_checkpoint_loads(tmp_path, tiny_preset):
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = write_random_checkpoint(tmp_path, tiny_preset, seed=2, dtype=torch.float32, shard_bytes=200_000)
    dit_dir = root / "acestep-v15-xl-base"
    assert (dit_dir / "model.safetensors.index.json").exists()
    assert len(list(dit_dir.glob("model-*-of-*.safetensors"))) > 1
    loaded = load_checkpoint(root, components=("acestep",))
    w = loaded.acestep.null_condition_emb
    assert torch.equal(w, random_tensor("null_condition_emb", tuple(w.shape), seed=2))


def _rewrite_without(path, drop: str, extra: dict | None = None):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors.pop(drop)
    tensors.update(extra or {})
    save_file(tensors, str(path))


def test_missing_tensor_is_named(tmp_path, tiny_preset):
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = write_random_checkpoint(tmp_path, tiny_preset, seed=3, dtype=torch.float32)
    _rewrite_without(root / "acestep-v15-xl-base" / "model.safetensors", "decoder.norm_out.weight",
                     {"decoder.bogus.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(root, components=("acestep",))
    text = str(err.value)
    assert "missing tensors (1): decoder.norm_out.weight" in text
    assert "unexpected tensors (1): decoder.bogus.weight" in text


def test_wrong_shape_is_named(tmp_path, tiny_preset):
    from acestep_edge.models.random_checkpoint import write_random_checkpoint

    root = write_random_checkpoint(tmp_path, tiny_preset, seed=3, dtype=torch.float32)
    _rewrite_without(root / "vae" / "diffusion_pytorch_model.safetensors", "decoder.conv2.weight_v",
                     {"decoder.conv2.weight_v": torch.zeros(3, 3, 3)})
    with pytest.raises(CheckpointError, match=r"wrong shapes \(1\): decoder\.conv2\.weight_v"):
        load_checkpoint(root, components=("vae",))


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="neither an official"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_export_pointed_at_the_dit_subfolder_names_the_parent(tiny_official, tmp_path):
    """A newcomer passes the DiT folder (config.json + silence_latent.pt) itself: say which folder to pass."""
    from click.testing import CliRunner

    from acestep_edge.cli import main

    (dit_dir,) = {p.parent for p in tiny_official.glob("*/silence_latent.pt")}
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(dit_dir), "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "point --checkpoint at the parent folder" in result.output
    assert str(tiny_official.resolve()) in result.output and not (tmp_path / "b").exists()
