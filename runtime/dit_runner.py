"""The DiT calls of one render: plain `session.run`, or IO binding with the constant inputs kept on the device.

With IO binding the encoder states, source latents and chunk masks (constant over a render) are
uploaded once per batch size; per step only x, t (two floats) and the velocity cross the bus. With
CUDA graphs (opt-in, CUDA only) every call goes through the session's registry (runtime/cuda_graphs.py):
fixed buffers and a `gpu_graph_id` per input shape, shared by all renders of the bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable

import numpy as np

from .cuda_graphs import OUTPUT, CudaGraphs
from .device import session_device

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass
class _Bound:
    binding: object
    keep: dict = field(default_factory=dict)  # OrtValues (and the arrays CPU OrtValues alias) kept alive


class DitRunner:
    """Runs the DiT for one render. `constants[key]` holds one set of constant feeds (everything but x and t).

    A render has a few such sets: [cond, null] for guided steps, cond alone for the others, and more
    for the editing tasks (the cover switch to a second condition; two batch-1 halves when a negative
    prompt makes the encoder lengths differ). Each call names its set.
    """

    def __init__(self, session, constants: dict[Hashable, dict[str, np.ndarray]], io_binding: bool = False,
                 device_id: int = 0, shared: dict[str, np.ndarray] | None = None, graphs: CudaGraphs | None = None):
        self.session = session
        # An fp16 bundle may declare fp16 inputs: feed each input in the graph's own dtype, return float32.
        self._types = {i.name: _NUMPY.get(i.type, np.float32) for i in session.get_inputs()}
        self._out_type = _NUMPY.get(session.get_outputs()[0].type, np.float32)
        self.constants = {key: {k: self._cast(k, v) for k, v in feeds.items()} for key, feeds in constants.items()}
        # Feeds common to every set (the adapter factors): uploaded once, bound into each set's binding.
        self.shared = {k: self._cast(k, v) for k, v in (shared or {}).items()}
        self._shared_values: dict | None = None
        self.device = session_device(list(session.get_providers()))
        self.device_id = device_id
        self.io_binding = io_binding
        # CUDA graphs: the session's registry (the bundle gives one only to a bound DiT session on CUDA).
        self.graphs = graphs if io_binding else None
        self._serial = graphs.serial() if self.graphs is not None else 0
        self.calls: list[tuple[int, float]] = []  # (batch, seconds) of every DiT call, for the benchmark
        self._bound: dict[Hashable, _Bound] = {}

    @property
    def cuda_graph(self) -> bool:
        return self.graphs is not None

    def _cast(self, name: str, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=self._types.get(name, np.float32))

    # -- per-render state ---------------------------------------------------------------------
    def _ortvalue(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def _bind(self, key: Hashable) -> _Bound:
        bound = self._bound.get(key)
        if bound is not None:
            return bound
        bound = _Bound(self.session.io_binding())
        if self._shared_values is None:
            self._shared_values = {n: (self._ortvalue(a), a) for n, a in self.shared.items()}
        for name, (value, array) in self._shared_values.items():
            bound.binding.bind_ortvalue_input(name, value)
            bound.keep[name] = (value, array)
        for name, array in self.constants[key].items():
            array = np.ascontiguousarray(array)
            value = self._ortvalue(array)
            bound.binding.bind_ortvalue_input(name, value)
            bound.keep[name] = (value, array)
        self._bound[key] = bound
        return bound

    # -- one call -----------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, t: np.ndarray, key: Hashable) -> np.ndarray:
        """velocity [B, T, 64] for x [B, T, 64] and t [B], with the constant feeds `constants[key]`."""
        batch = int(x.shape[0])
        start = time.perf_counter()
        x, t = self._cast("x", x), self._cast("t", t)
        if not self.io_binding:
            (v,) = self.session.run(None, {**self.shared, **self.constants[key], "x": x, "t": t})
        elif self.graphs is not None:
            v = self.graphs.run({**self.shared, **self.constants[key]}, x, t, (self._serial, key), self._out_type)
        else:
            bound = self._bind(key)
            xv, tv = self._ortvalue(x), self._ortvalue(t)
            bound.binding.bind_ortvalue_input("x", xv)
            bound.binding.bind_ortvalue_input("t", tv)
            bound.binding.bind_output(OUTPUT, self.device, self.device_id)
            self.session.run_with_iobinding(bound.binding)
            v = bound.binding.copy_outputs_to_cpu()[0]
            bound.binding.clear_binding_outputs()
        v = np.asarray(v, dtype=np.float32)
        self.calls.append((batch, time.perf_counter() - start))
        return v
