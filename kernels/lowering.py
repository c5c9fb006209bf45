"""Export lowering switch: which ONNX form `attention`, `rms_norm` and `apply_rotary` take when traced.

    with use_lowering("standard"):
        torch.onnx.export(model, args, dynamo=True, opset_version=23,
                          custom_translation_table=translation_table("standard"))

Modes: ``standard`` (ONNX opset-23 ``Attention``/``RMSNormalization``/``RotaryEmbedding``),
``ort`` (ONNX Runtime contrib ops), ``plain`` (basic ops only, for TensorRT). Outside the context
(mode None) the torch functions run their eager code, unchanged. Sliding-window attention uses the
blocked local lowering in every mode.

Full and cross attention (no window) take one of two forms, `full_attention=`:
``fused`` (the mode's op: ``Attention``, ``MultiHeadAttention`` or MatMul → Softmax → MatMul) or
``chunked`` (an ONNX ``Scan`` over blocks of `query_block` queries, each against all keys, so no
[Lq, Lk] score tensor exists). ``auto`` (the default) picks ``fused`` for unmasked bidirectional
calls where the target provider has a flash kernel for the graph (`flash_target`: CUDA with fp16,
i.e. ``--target gpu`` and an fp16 graph); otherwise ``chunked`` where the mode's op materialises
the scores on ONNX Runtime CPU (see kernels/README.md) and ``fused`` elsewhere.
This module imports torch only inside `translation_table`.
"""

from __future__ import annotations

import contextlib

MODES = ("standard", "ort", "plain")
FULL_ATTENTION = ("auto", "chunked", "fused")
# Queries per Scan step of the chunked lowering; chosen by time vs memory in
# benchmarks/full_attention_memory.py (see benchmarks/RESULTS.md).
DEFAULT_QUERY_BLOCK = 64

# The trace-time switch. Only `use_lowering` sets it (export/onnx_export.py enters it around one
# graph's export with explicit arguments); the kernels read it while torch traces them.
_mode: str | None = None
_full_attention: str = "auto"
_query_block: int = DEFAULT_QUERY_BLOCK
_flash: bool = False  # the graph's target provider runs unmasked attention in a flash kernel
_used: dict[str, set[str]] | None = None  # attention kind → lowered forms chosen inside use_lowering


def current_mode() -> str | None:
    """The active lowering mode, or None for eager torch."""
    return _mode


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown lowering mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def check_full_attention(full_attention, query_block) -> tuple[str, int]:
    """Validate the full-attention choice and block size; returns them."""
    if full_attention not in FULL_ATTENTION:
        raise ValueError(f"unknown full-attention lowering {full_attention!r}; choose one of {', '.join(FULL_ATTENTION)}")
    if isinstance(query_block, bool) or not isinstance(query_block, int) or query_block < 1:
        raise ValueError(f"query block must be a positive int, got {query_block!r}")
    return full_attention, query_block


def flash_target(target: str, precision: str) -> bool:
    """Whether `auto` may count on a flash kernel for a graph of `precision` exported for `target`.

    ONNX Runtime's CUDA `Attention` (opset 23) and `MultiHeadAttention` take Flash only in fp16/bf16
    and without a mask (kernels/README.md); fp32, int8 and int4 graphs keep fp32 activations, and the
    CPU has no flash kernel for `Attention`.
    """
    return target == "gpu" and precision == "fp16"


def note_form(kind: str, form: str) -> None:
    """Record that an attention call of `kind` ('full', 'sliding') was lowered to `form`."""
    if _used is not None:
        _used.setdefault(kind, set()).add(form)


def full_attention_form(mode: str, masked: bool, causal: bool) -> str:
    """'chunked' or 'fused' for one full/cross attention call under `mode` and the active setting.

    ``auto``: on a flash target (`flash_target`) an unmasked bidirectional call stays fused, the one
    op CUDA runs as Flash. Otherwise: ONNX Runtime's CPU ``Attention`` (standard) always builds the
    [B, H, Lq, Lk] scores; its CPU ``MultiHeadAttention`` (ort) runs a tiled flash kernel unless there
    is a mask or causal flag; ``plain`` targets TensorRT, which fuses MatMul → Softmax → MatMul itself.
    """
    if _full_attention != "auto":
        form = _full_attention
    elif _flash and not (masked or causal):
        form = "fused"
    elif mode == "standard" or (mode == "ort" and (masked or causal)):
        form = "chunked"
    else:
        form = "fused"
    note_form("full", form)
    return form


def query_block() -> int:
    return _query_block


@contextlib.contextmanager
def use_lowering(mode: str, full_attention: str = "auto", query_block: int = DEFAULT_QUERY_BLOCK,
                 flash: bool = False):
    """Within the block, kernels trace to `mode`'s ONNX form (module-level state, not thread-safe).

    `flash`: the graph is for a provider with a flash kernel (`flash_target`), which `auto` then uses.

    Yields {attention kind: set of forms} filled while tracing: what the graph actually contains.
    """
    global _mode, _full_attention, _query_block, _flash, _used
    _check_mode(mode)
    check_full_attention(full_attention, query_block)
    previous = _mode, _full_attention, _query_block, _flash, _used
    used: dict[str, set[str]] = {}
    _mode, _full_attention, _query_block, _flash, _used = mode, full_attention, query_block, bool(flash), used
    try:
        yield used
    finally:
        _mode, _full_attention, _query_block, _flash, _used = previous


@contextlib.contextmanager
def eager():
    """Run the eager torch bodies even inside `use_lowering` (the custom ops' own implementations)."""
    global _mode
    previous, _mode = _mode, None
    try:
        yield
    finally:
        _mode = previous


def translation_table(mode: str, opset: int = 23) -> dict:
    """`custom_translation_table` for torch.onnx.export: {acestep custom op: onnxscript function}."""
    _check_mode(mode)
    if opset < 23:
        raise ValueError(f"the kernels' ONNX lowerings need opset >= 23, got {opset}")
    from acestep_edge.kernels import attention_onnx, norm_rotary_onnx

    if mode == "plain":  # only the chunked attention op; everything else traces to basic ops
        return attention_onnx.translation_functions(mode)
    return {**attention_onnx.translation_functions(mode), **norm_rotary_onnx.translation_functions(mode)}
