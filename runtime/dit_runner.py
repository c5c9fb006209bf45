"""The DiT calls of one render: plain `session.run`, or IO binding with the constant inputs kept on the device.

With IO binding the encoder states, source latents and chunk masks (constant over a render) are
uploaded once per batch size; per step only x, t (two floats) and the velocity cross the bus. With
CUDA graphs (opt-in, CUDA only) x and t are copied into fixed device buffers and the output buffer
is bound once, which is what onnxruntime's `enable_cuda_graph` requires: the same shapes and
addresses on every replay. Each set of constant feeds is its own captured graph (`gpu_graph_id`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable

import numpy as np

from .device import session_device

OUTPUT = "velocity"
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass
class _Bound:
    binding: object
    keep: dict = field(default_factory=dict)  # OrtValues (and the arrays CPU OrtValues alias) kept alive
    x: object = None
    t: object = None
    out: object = None
    graph_id: int | None = None


class DitRunner:
    """Runs the DiT for one render. `constants[key]` holds one set of constant feeds (everything but x and t).

    A render has a few such sets: [cond, null] for guided steps, cond alone for the others, and more
    for the editing tasks (the cover switch to a second condition; two batch-1 halves when a negative
    prompt makes the encoder lengths differ). Each call names its set.
    """

    def __init__(self, session, constants: dict[Hashable, dict[str, np.ndarray]], io_binding: bool = False,
                 cuda_graph: bool = False, device_id: int = 0, shared: dict[str, np.ndarray] | None = None):
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
        # CUDA graphs need every buffer on the GPU; a session that fell back to CPU runs plainly bound.
        self.cuda_graph = cuda_graph and io_binding and self.device == "cuda"
        self.calls: list[tuple[int, float]] = []  # (batch, seconds) of every DiT call, for the benchmark
        self._bound: dict[Hashable, _Bound] = {}

    def _cast(self, name: str, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=self._types.get(name, np.float32))

    # -- per-render state ---------------------------------------------------------------------
    def _ortvalue(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def _bind(self, key: Hashable, x: np.ndarray, t: np.ndarray) -> _Bound:
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
        if self.cuda_graph:
            import onnxruntime as ort

            bound.x, bound.t = self._ortvalue(x), self._ortvalue(t)
            bound.binding.bind_ortvalue_input("x", bound.x)
            bound.binding.bind_ortvalue_input("t", bound.t)
            bound.out = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), self._out_type, self.device,
                                                                  self.device_id)
            bound.binding.bind_ortvalue_output(OUTPUT, bound.out)
            bound.graph_id = len(self._bound) + 1
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
        elif self.cuda_graph:
            v = self._run_graph(self._bind(key, x, t), x, t)
        else:
            bound = self._bind(key, x, t)
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

    def _run_graph(self, bound: _Bound, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        bound.x.update_inplace(np.ascontiguousarray(x))
        bound.t.update_inplace(np.ascontiguousarray(t))
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(bound.graph_id))
        self.session.run_with_iobinding(bound.binding, options)
        return bound.out.numpy()
