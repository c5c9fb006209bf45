"""Minimal onnx schemas for the ONNX Runtime contrib ops the ``ort`` lowering emits.

The torch exporter builds every traced node from an ``onnx.defs`` schema, and onnx does not ship
ORT's. Registering them is process-wide: onnx.checker in this process then accepts these ops (a
fresh process without this module rejects ``SimplifiedLayerNormalization``, which ORT itself keeps
in the ONNX domain). These declare only the inputs, outputs and attributes we use (ONNX Runtime's own
schemas, in its ``contrib_ops`` registry, are the authority at run time).
"""

from __future__ import annotations

import onnx.defs
import onnxscript

DOMAIN = "com.microsoft"
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]

_S = onnx.defs.OpSchema
_OPT = _S.FormalParameterOption.Optional


def _param(name: str, type_str: str, optional: bool = False):
    return _S.FormalParameter(name, type_str, param_option=_OPT if optional else _S.FormalParameterOption.Single)


def _attr(name: str, kind, required: bool = False):
    return _S.Attribute(name, kind, required=required)


def _schemas():
    a = _S.AttrType
    yield _S(
        "MultiHeadAttention", DOMAIN, 1,
        inputs=[_param("query", "T"), _param("key", "T", True), _param("value", "T", True),
                _param("bias", "T", True), _param("key_padding_mask", "M", True)],
        outputs=[_param("output", "T")],
        type_constraints=[("T", _FLOATS, ""), ("M", ["tensor(int32)"], "")],
        attributes=[_attr("num_heads", a.INT, True), _attr("scale", a.FLOAT), _attr("unidirectional", a.INT),
                    _attr("mask_filter_value", a.FLOAT)],
    )
    # ORT registers this contrib op in the ONNX domain (since version 1), as its own fusions emit it.
    yield _S(
        "SimplifiedLayerNormalization", "", 1,
        inputs=[_param("X", "T"), _param("scale", "V")],
        outputs=[_param("Y", "V")],
        type_constraints=[("T", _FLOATS, ""), ("V", _FLOATS, "")],
        attributes=[_attr("axis", a.INT), _attr("epsilon", a.FLOAT), _attr("stash_type", a.INT)],
    )
    yield _S(
        "RotaryEmbedding", DOMAIN, 1,
        inputs=[_param("input", "T"), _param("position_ids", "M"), _param("cos_cache", "T"), _param("sin_cache", "T")],
        outputs=[_param("output", "T")],
        type_constraints=[("T", _FLOATS, ""), ("M", ["tensor(int64)"], "")],
        attributes=[_attr("interleaved", a.INT), _attr("num_heads", a.INT), _attr("rotary_embedding_dim", a.INT),
                    _attr("scale", a.FLOAT), _attr("is_packed_batching", a.INT)],
    )


def register() -> None:
    """Register the schemas once (idempotent; skips any already known to onnx)."""
    for schema in _schemas():
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)


register()
msft = onnxscript.values.Opset(DOMAIN, 1)
