"""Precision passes: functions that rewrite an exported ONNX graph (onnx_ir model) before it is saved.

A pass takes the graph name and the fp32 `onnx_ir.Model` and returns the model to save. fp32 is
the identity; fp16 and int8 (DESIGN §7) register here when they land. Graph IO stays float32
unless a pass also records `float16` IO in the manifest (see docs/bundle-format.md).
"""

from __future__ import annotations

from typing import Callable

PrecisionPass = Callable[[str, object], object]

_PASSES: dict[str, PrecisionPass] = {}


def register(name: str) -> Callable[[PrecisionPass], PrecisionPass]:
    """Decorator: register a pass under `name` (e.g. 'fp16')."""

    def wrap(fn: PrecisionPass) -> PrecisionPass:
        if name in _PASSES:
            raise ValueError(f"precision {name!r} is already registered")
        _PASSES[name] = fn
        return fn

    return wrap


def precisions() -> tuple[str, ...]:
    return tuple(_PASSES)


def get_pass(name: str) -> PrecisionPass:
    try:
        return _PASSES[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; available: {', '.join(precisions())}") from None


@register("fp32")
def fp32(graph_name: str, model):
    """The reference precision: the exported graph unchanged."""
    return model
