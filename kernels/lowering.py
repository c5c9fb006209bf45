"""Export lowering switch: which ONNX form `attention`, `rms_norm` and `apply_rotary` take when traced.

    with use_lowering("standard"):
        torch.onnx.export(model, args, dynamo=True, opset_version=23,
                          custom_translation_table=translation_table("standard"))

Modes: ``standard`` (ONNX opset-23 ``Attention``/``RMSNormalization``/``RotaryEmbedding``),
``ort`` (ONNX Runtime contrib ops), ``plain`` (basic ops only, for TensorRT). Outside the context
(mode None) the torch functions run their eager code, unchanged. Sliding-window attention uses the
blocked local lowering in every mode. This module imports torch only inside `translation_table`.
"""

from __future__ import annotations

import contextlib

MODES = ("standard", "ort", "plain")

_mode: str | None = None


def current_mode() -> str | None:
    """The active lowering mode, or None for eager torch."""
    return _mode


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown lowering mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


@contextlib.contextmanager
def use_lowering(mode: str):
    """Within the block, kernels trace to `mode`'s ONNX form (module-level state, not thread-safe)."""
    global _mode
    previous, _mode = _mode, _check_mode(mode)
    try:
        yield mode
    finally:
        _mode = previous


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
    if mode == "plain":
        return {}  # plain mode emits no custom ops
    from acestep_edge.kernels import attention_onnx, norm_rotary_onnx

    return {**attention_onnx.translation_functions(mode), **norm_rotary_onnx.translation_functions(mode)}
