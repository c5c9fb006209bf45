"""The ``acestep::chunk_begin`` / ``acestep::chunk_end`` custom ops behind `token_chunks.mark`, and their ONNX nodes."""

from __future__ import annotations

import onnx.defs
import onnxscript
import torch

from acestep_edge.kernels.token_chunks import DOMAIN, OPS


def _register() -> None:
    # The torch exporter builds every node from an onnx.defs schema (as kernels/ort_schemas.py does for ORT's ops).
    s = onnx.defs.OpSchema
    for name in OPS.values():
        if not onnx.defs.has(name, DOMAIN):
            onnx.defs.register_schema(s(
                name, DOMAIN, 1, inputs=[s.FormalParameter("x", "T")], outputs=[s.FormalParameter("y", "T")],
                type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")]))


_register()
_marks = onnxscript.values.Opset(DOMAIN, 1)


@torch.library.custom_op("acestep::chunk_begin", mutates_args=())
def chunk_begin(x: torch.Tensor) -> torch.Tensor:
    return x.clone()  # a custom op may not return its input


@chunk_begin.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("acestep::chunk_end", mutates_args=())
def chunk_end(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@chunk_end.register_fake
def _(x):
    return torch.empty_like(x)


def begin_onnx(x):
    return _marks.TokenChunkBegin(x)


def end_onnx(x):
    return _marks.TokenChunkEnd(x)


def translation_functions() -> dict:
    return {torch.ops.acestep.chunk_begin.default: begin_onnx, torch.ops.acestep.chunk_end.default: end_onnx}
