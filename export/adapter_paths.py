"""Low-rank adapter side paths of the DiT graph: per target kind, factor inputs stacked over layers.

For a target kind such as `self_attn.q_proj` the DiT graph takes two extra float32 inputs,
`lora_a.self_attn.q_proj` [L, r, in] and `lora_b.self_attn.q_proj` [L, out, r] (PEFT's and torch's
Linear layout), and every layer i adds `linear(linear(x, A[i]), B[i])` to that projection's output. r is a symbolic dim per kind, so one adapter set's ranks can differ by kind,
several adapters stack by concatenating along r, and "no adapter" is r = 1 of zeros. The factors
are graph inputs, never initializers, so the precision passes (fp16, int8, int4: constant weights
only) leave the side paths in fp32 and every precision takes adapters the same way.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION_KINDS = tuple(f"{block}.{proj}" for block in ("self_attn", "cross_attn")
                        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"))
MLP_KINDS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# `--adapter-targets` choices → kinds. attention is the default: the official trainer's targets.
TARGET_SETS = {"none": (), "attention": ATTENTION_KINDS, "attention+mlp": ATTENTION_KINDS + MLP_KINDS}
EXAMPLE_RANK = 3  # traced rank; >1 so the exporter keeps r symbolic (it specialises size-1 dims)


def input_names(kind: str) -> tuple[str, str]:
    return f"lora_a.{kind}", f"lora_b.{kind}"


def rank_symbol(kind: str) -> str:
    return "r_" + kind.replace(".", "_")


def kind_dims(cfg, kind: str) -> tuple[int, int]:
    """(in, out) features of a target kind's linear layer in the DiT."""
    heads, kv, d = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.hidden_size
    proj = kind.split(".")[1]
    return {"q_proj": (d, heads), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (heads, d),
            "gate_proj": (d, cfg.intermediate_size), "up_proj": (d, cfg.intermediate_size),
            "down_proj": (cfg.intermediate_size, d)}[proj]


def io_shapes(cfg, kind: str) -> tuple[tuple, tuple]:
    """The manifest shapes of a kind's A and B inputs."""
    fin, fout = kind_dims(cfg, kind)
    r = rank_symbol(kind)
    return (cfg.num_hidden_layers, r, fin), (cfg.num_hidden_layers, fout, r)


def example_factors(cfg, kinds, g: torch.Generator, rank: int = EXAMPLE_RANK) -> list[torch.Tensor]:
    """Random non-zero factors for tracing and parity (scaled so the side path is a small correction)."""
    out = []
    for kind in kinds:
        fin, fout = kind_dims(cfg, kind)
        layers = cfg.num_hidden_layers
        out.append(torch.randn(layers, rank, fin, generator=g) * fin ** -0.5)
        out.append(torch.randn(layers, fout, rank, generator=g) * 0.1 * rank ** -0.5)
    return out


def factor_dynamic(kinds) -> list[dict]:
    from torch.export import Dim

    shapes = []
    for kind in kinds:
        r = Dim(rank_symbol(kind), min=1, max=8192)
        shapes += [{1: r}, {2: r}]
    return shapes


class SidePaths:
    """Forward hooks on a DiT's target linears that add `linear(linear(x, A[i]), B[i])` while factors are set.
    (`linear` rather than `matmul`: torch.matmul's 3-D folding made the exporter specialise the batch.)"""

    def __init__(self, dit: nn.Module, kinds):
        self.kinds = tuple(kinds)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        for i, layer in enumerate(dit.layers):
            for kind in self.kinds:
                module = layer.get_submodule(kind)
                # One side path per linear: a DiT wrapped again (another export of the same model) replaces
                # the previous hook instead of stacking a second one.
                old = getattr(module, "_adapter_side_path", None)
                if old is not None:
                    old.remove()
                module._adapter_side_path = module.register_forward_hook(self._hook(i, kind))

    def _hook(self, layer: int, kind: str):
        def add_side_path(module, args, out):
            if self.factors is None:
                return out
            a, b = self.factors[kind]
            return out + nn.functional.linear(nn.functional.linear(args[0], a[layer]), b[layer])

        return add_side_path

    def set(self, flat: tuple | None) -> None:
        """Factors in input order (A, B per kind); None outside a forward, so the hooks add nothing."""
        if flat is None:
            self.factors = None
            return
        if len(flat) != 2 * len(self.kinds):
            raise ValueError(f"expected {2 * len(self.kinds)} adapter factor inputs, got {len(flat)}")
        self.factors = {k: (flat[2 * i], flat[2 * i + 1]) for i, k in enumerate(self.kinds)}
