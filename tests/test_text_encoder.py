"""Qwen3TextEncoder against transformers' Qwen3Model: state-dict layout, parameter count, fp32 parity."""

from __future__ import annotations

import pytest
import torch

from acestep_edge.models.config import TextEncoderConfig, tiny
from acestep_edge.models.text_encoder import Qwen3TextEncoder

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.export  # torch, onnx and the export side


def hf_config(cfg: TextEncoderConfig, attn: str = "eager"):
    c = transformers.Qwen3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        hidden_act="silu",
        attention_bias=False,
        use_cache=False,
    )
    c._attn_implementation = attn
    return c


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("cfg", [tiny().text, TextEncoderConfig()], ids=["tiny", "0.6B"])
def test_state_dict_matches_transformers(cfg):
    with torch.device("meta"):
        ours = Qwen3TextEncoder(cfg)
        ref = transformers.Qwen3Model(hf_config(cfg))
    assert shapes(ours) == shapes(ref)
    assert n_params(ours) == n_params(ref)


def test_real_parameter_count():
    with torch.device("meta"):
        model = Qwen3TextEncoder(TextEncoderConfig())
    # ≈ 595.8 M parameters: the Qwen/Qwen3-Embedding-0.6B checkpoint's count.
    assert abs(n_params(model) / 1e6 - 595.8) < 0.1


def random_pair(cfg: TextEncoderConfig, attn: str, seed: int = 0):
    """A transformers Qwen3Model with seeded random weights and our model loaded from it."""
    torch.manual_seed(seed)
    ref = transformers.Qwen3Model(hf_config(cfg, attn)).eval()
    # Non-trivial norm weights so a misplaced or missing norm cannot hide.
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    with torch.device("meta"):
        ours = Qwen3TextEncoder(cfg)
    ours.load_state_dict(ref.state_dict(), assign=True)
    return ours.eval(), ref


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("batch,length", [(1, 1), (1, 7), (2, 16), (2, 33)])
def test_forward_parity_fp32(attn, batch, length):
    cfg = tiny().text
    ours, ref = random_pair(cfg, attn)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        want = ref(input_ids=ids).last_hidden_state
        got = ours(ids)
    assert got.shape == (batch, length, cfg.hidden_size)
    assert rel_err(got, want) <= 1e-5


def test_forward_is_causal():
    cfg = tiny().text
    ours, _ = random_pair(cfg, "eager")
    ids = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = ours(ids), ours(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_embed_is_table_lookup():
    cfg = tiny().text
    ours, ref = random_pair(cfg, "eager")
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = ours.embed(ids)
    torch.testing.assert_close(got, ref.embed_tokens.weight[ids], rtol=0, atol=0)
    torch.testing.assert_close(got, ref.get_input_embeddings()(ids), rtol=0, atol=0)


def test_rejects_bad_input():
    with torch.device("meta"):
        model = Qwen3TextEncoder(tiny().text)
    with pytest.raises(ValueError, match="batch, length"):
        model.embed(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        model.embed(torch.zeros(1, 5))


def test_rejects_bad_gqa_config():
    bad = TextEncoderConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                            num_attention_heads=3, num_key_value_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="multiple"):
        Qwen3TextEncoder(bad)
