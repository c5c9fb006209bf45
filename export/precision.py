"""The per-graph precision plan of a bundle (fp32, fp16, int8, int4), the rewrite to it, and error budgets.

`apply_precision` rewrites a graph's fp32 `onnx_ir.Model` in place before `onnx_ir.save`; every weight
it derives is computed lazily while the file is written (export/quantize_graph.py), so the XL path
never holds an fp32 copy of its weights.

`--precision` picks a bundle-wide default per graph (DEFAULTS); `--graph-precision` overrides single
graphs, within what each graph supports (ALLOWED). Graph IO stays float32 in every precision.
"""

from __future__ import annotations

from acestep_edge.export.graphs import GRAPH_NAMES

PRECISIONS = ("fp32", "fp16", "int8", "int4")

# What each graph may be exported in, and why not the rest.
ALLOWED = {
    "text_encoder": ("fp32", "fp16", "int8", "int4"),
    "condition_encoder": ("fp32",),  # the lyric encoder's last MLP exceeds the fp16 range (~5e5 > 65,504)
    "dit": ("fp32", "fp16", "int8", "int4"),
    "vae_decoder": ("fp32", "fp16"),  # convolutions only: no linear layers for int8/int4
    "vae_encoder": ("fp32", "fp16"),
    "audio_tokenizer": ("fp32",),  # FSQ rounding is exact only in fp32; small and used for cover hints only
    "audio_detokenizer": ("fp32",),
}
_WHY_NOT = {
    "condition_encoder": "its lyric encoder's activations exceed the fp16 range and it runs once per render",
    "vae_decoder": "it has no linear layers to quantise; use fp16",
    "vae_encoder": "it has no linear layers to quantise; use fp16",
    "audio_tokenizer": "its FSQ rounding must stay exact and it is small",
    "audio_detokenizer": "it is small and only used for cover hints",
}

# Bundle precision → each graph's precision. int8/int4 quantise the DiT (the weight that matters:
# 83 % of an XL bundle); the other graphs keep fp32 so the CPU path runs no fp16 casts.
DEFAULTS = {
    "fp32": {g: "fp32" for g in GRAPH_NAMES},
    "fp16": {**{g: "fp32" for g in GRAPH_NAMES}, "text_encoder": "fp16", "dit": "fp16",
             "vae_decoder": "fp16", "vae_encoder": "fp16"},
    "int8": {**{g: "fp32" for g in GRAPH_NAMES}, "dit": "int8"},
    "int4": {**{g: "fp32" for g in GRAPH_NAMES}, "dit": "int4"},
}


def parse_graph_precision(text: str | None) -> dict[str, str]:
    """'vae_decoder=fp16,text_encoder=fp32' → {graph: precision}, checked; ValueError names the bad item."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        graph, sep, prec = (s.strip() for s in item.partition("="))
        if not sep or not graph or not prec:
            raise ValueError(f"--graph-precision item {item!r} is not GRAPH=PRECISION "
                             f"(e.g. vae_decoder=fp16,text_encoder=fp32)")
        if graph not in GRAPH_NAMES:
            raise ValueError(f"--graph-precision: unknown graph {graph!r}; graphs: {', '.join(GRAPH_NAMES)}")
        if prec not in PRECISIONS:
            raise ValueError(f"--graph-precision: unknown precision {prec!r} for {graph}; "
                             f"precisions: {', '.join(PRECISIONS)}")
        if graph in out and out[graph] != prec:
            raise ValueError(f"--graph-precision gives {graph} twice ({out[graph]} and {prec})")
        out[graph] = prec
    return out


def plan(precision: str, overrides: dict[str, str] | None = None, graphs=GRAPH_NAMES) -> dict[str, str]:
    """Each exported graph's precision: the bundle default, then the overrides, each checked against ALLOWED."""
    if precision not in DEFAULTS:
        raise ValueError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}")
    overrides = dict(overrides or {})
    unused = [g for g in overrides if g not in graphs]
    if unused:
        raise ValueError(f"--graph-precision names {', '.join(unused)}, which this export does not include "
                         f"(--graphs {' '.join(graphs)})")
    result = {}
    for graph in graphs:
        prec = overrides.get(graph, DEFAULTS[precision][graph])
        if prec not in ALLOWED[graph]:
            raise ValueError(f"{graph} cannot be exported in {prec}: {_WHY_NOT.get(graph, '')}; "
                             f"it supports {', '.join(ALLOWED[graph])}")
        result[graph] = prec
    return result


def apply_precision(graph_name: str, precision: str, model, target: str = "cpu") -> dict | None:
    """Rewrite `model` (onnx_ir) in place to `precision`; returns the manifest's `quantization` record
    (None for fp32)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        from acestep_edge.export.fp16 import convert_fp16

        from acestep_edge.kernels.lowering import flash_target

        flash = flash_target(target, precision)  # the fused attention in fp16 too: CUDA's Flash takes only fp16
        count = convert_fp16(model, attention=flash)
        if flash:
            return {"op": "fp16 weights: MatMul/Gemm/Conv/ConvTranspose/Gather and fused Attention in fp16, fp32 "
                          "between them", "bits": 16, "block_size": None, "symmetric": None, "accuracy_level": None,
                    "provider": "cuda", "rewritten_ops": count,
                    "why": "halves the weights; the fused Attention runs in fp16 so CUDA can take its Flash kernel "
                           "(softmax statistics fp32 inside it); norms, rotary and timestep angles stay fp32"}
        return {"op": "fp16 weights: MatMul/Gemm/Conv/ConvTranspose/Gather in fp16, fp32 between them",
                "bits": 16, "block_size": None, "symmetric": None, "accuracy_level": None,
                "provider": "any", "rewritten_ops": count,
                "why": "halves the weights; norms, softmax/attention, rotary and timestep angles stay fp32"}
    from acestep_edge.export.quantize import quantize_model, scheme_for

    scheme = scheme_for(precision, target)
    record = scheme.to_dict()
    record["rewritten_ops"] = quantize_model(model, scheme)
    if record["rewritten_ops"] == 0:
        raise ValueError(f"{graph_name}: no transformer linear layers found to quantise to {precision}")
    return record


# Export-time error budgets: max |ort − torch fp32| / max |torch fp32| over the parity cases
# (export/parity.py). Set from measurement on seeded tiny random checkpoints (tests/test_precision.py
# measures them; docs/bundle-format.md gives the figures) with ~2x headroom; fp32 is the exporter's own
# tolerance. A graph over budget fails the export unless --allow-over-budget.
# fp32 at XL size (random bf16 checkpoint, benchmarks/RESULTS.md): the transformer graphs measure
# <= 2.1e-6, the VAE graphs 1.8e-4 (decoder) and 2.0e-4 (encoder) in both max/peak and RMS ratios; the
# torch fp32 VAE decoder is itself 1.3e-4 from its float64 result (30+ convolutions of up to 2,048 x 7
# terms), so its budget is set at 5x the measurement, not at the transformers' 1e-4.
BUDGETS = {
    "fp32": 1e-4, ("vae_decoder", "fp32"): 1e-3, ("vae_encoder", "fp32"): 1e-3,
    ("text_encoder", "fp16"): 5e-3, ("dit", "fp16"): 3e-3, ("vae_decoder", "fp16"): 0.015,
    ("vae_encoder", "fp16"): 0.08,
    ("text_encoder", "int8"): 0.12, ("dit", "int8"): 0.06,
    ("text_encoder", "int4"): 0.8, ("dit", "int4"): 0.3,
}


def budget_for(graph: str, precision: str) -> float:
    if precision == "fp32":
        return BUDGETS.get((graph, "fp32"), BUDGETS["fp32"])
    try:
        return BUDGETS[(graph, precision)]
    except KeyError:
        raise ValueError(f"no error budget for {graph} in {precision}") from None


# Whole-render budgets against the fp32 bundle's render (same noise, 50 steps, APG; tiny random
# checkpoints, tests/test_precision_render.py): the multi-resolution STFT log-magnitude distance in dB
# (export/parity.py) and the final latents' max relative error. Measured figures and headroom are in
# docs/bundle-format.md. A render from other noise is 6.1 dB away: the scale they are judged on.
RENDER_BUDGETS = {
    "fp16": {"stft_db": 0.6, "latent_max_rel_err": 2e-3},  # measured 0.21 dB, 4.0e-4
    "int8": {"stft_db": 3.0, "latent_max_rel_err": 0.03},  # measured 1.62 dB, 7.3e-3
    "int4": {"stft_db": 5.5, "latent_max_rel_err": 0.3},  # measured 4.59 dB, 0.145 (blocks of 128; other noise: 6.1 dB)
}
