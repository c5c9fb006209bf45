"""Adapters per request: the `lora` field, validation against the bundle's DiT, and the factor feeds, cached.

The DiT graph takes each target kind's factors as inputs `lora_a.<kind>` [L, r, in] and
`lora_b.<kind>` [L, out, r] (docs/bundle-format.md). A set of adapters becomes one feed per input:
each adapter's per-layer A and weight·scale·B, zero-padded to its largest rank, concatenated along
r with the other adapters' (their deltas add); a kind no adapter touches gets rank-1 zeros.
Switching sets is a new dict of arrays for the same session: nothing is re-created or re-loaded.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .adapter_formats import Adapter, AdapterError, load_adapter
from .wire import RequestError

WEIGHT_RANGE = (-2.0, 2.0)
MAX_ADAPTERS = 8
CODE = "invalidLora"


@dataclass(frozen=True)
class LoraRef:
    """One `lora` entry of a request: an adapter name or path and its weight."""

    model: str
    weight: float = 1.0


def parse_lora(value: Any) -> tuple[LoraRef, ...]:
    """The request's top-level `lora` list → LoraRefs; RequestError names the bad entry."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RequestError("lora", f"lora: expected a list of {{\"model\": NAME, \"weight\": W}} objects, got "
                           f"{type(value).__name__}", "invalidType")
    if len(value) > MAX_ADAPTERS:
        raise RequestError("lora", f"lora: {len(value)} adapters; at most {MAX_ADAPTERS} at once", "valueOutOfRange")
    refs = []
    for i, item in enumerate(value):
        param = f"lora[{i}]"
        if not isinstance(item, dict):
            raise RequestError(param, f"{param}: expected an object with model and weight", "invalidType")
        unknown = [k for k in item if k not in ("model", "weight")]
        if unknown:
            raise RequestError(f"{param}.{unknown[0]}", f"{param}.{unknown[0]}: unknown parameter; allowed here: "
                               "model, weight", "unknownParameter")
        model = item.get("model")
        if not isinstance(model, str) or not model.strip():
            raise RequestError(f"{param}.model", f"{param}.model: is required; send the adapter's name (server) "
                               "or path (CLI)", "missingParameter" if model is None else "invalidType")
        weight = item.get("weight", 1.0)
        lo, hi = WEIGHT_RANGE
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight):
            raise RequestError(f"{param}.weight", f"{param}.weight: adapter {model!r}: expected a number from "
                               f"{lo:g} to {hi:g}, got {weight!r}", "invalidType")
        if not lo <= weight <= hi:
            raise RequestError(f"{param}.weight", f"{param}.weight: adapter {model!r}: {weight:g} is out of range; "
                               f"use a weight from {lo:g} to {hi:g}", "valueOutOfRange")
        refs.append(LoraRef(model.strip(), float(weight)))
    return tuple(refs)


def cli_refs(options: tuple[str, ...]) -> tuple[LoraRef, ...]:
    """`--lora PATH[=WEIGHT]` options → LoraRefs (a path may itself contain '=': only a numeric tail is a weight)."""
    items = []
    for option in options:
        path, sep, tail = option.rpartition("=")
        try:
            weight = float(tail) if sep else 1.0
        except ValueError:
            path, weight = option, 1.0
        items.append({"model": path if sep and path else option, "weight": weight})
    try:
        return parse_lora(items)
    except RequestError as exc:
        raise RequestError("--lora", exc.message.replace("lora[", "--lora[", 1), exc.code) from exc


def _default_resolver(name: str, param: str, task_uuid: str | None) -> Path:
    return Path(name).expanduser()


@dataclass
class AdapterSet:
    """The DiT feeds of one set of adapters and what the response reports about them."""

    feeds: dict[str, np.ndarray]
    report: list[dict] = field(default_factory=list)


class Adapters:
    """A bundle's adapter inputs, the resolver for request names, and caches of adapters and feed sets."""

    def __init__(self, dit_graph: dict | None, export_command: str | None = None,
                 resolver: Callable[[str, str, str | None], Path] | None = None,
                 cache_adapters: int = 4, cache_sets: int = 2):
        self.kinds: dict[str, tuple[int, int, int]] = _kinds(dit_graph or {})
        self.export_command = export_command
        self.resolver = resolver or _default_resolver
        self._adapters: OrderedDict[tuple, Adapter] = OrderedDict()
        self._sets: OrderedDict[tuple, AdapterSet] = OrderedDict()
        self.cache_adapters, self.cache_sets = cache_adapters, cache_sets
        self._base: AdapterSet | None = None
        self._lock = threading.RLock()  # the server checks adapters on its event loop, renders on a worker

    def base(self) -> AdapterSet:
        """No adapter: rank-1 zeros for every kind (empty for a bundle without adapter inputs)."""
        if self._base is None:
            self._base = AdapterSet(self._feeds([]))
        return self._base

    def resolve(self, refs: tuple[LoraRef, ...], task_uuid: str | None = None) -> AdapterSet:
        """Load, validate and stack `refs`; RequestError names the adapter and the problem. Nothing renders here."""
        with self._lock:
            return self._resolve(refs, task_uuid)

    def _resolve(self, refs: tuple[LoraRef, ...], task_uuid: str | None) -> AdapterSet:
        if not refs:
            return self.base()
        if not self.kinds:
            how = f"re-run `{self.export_command}`" if self.export_command else "re-export it with acestep-edge export"
            raise RequestError("lora", "lora: this bundle's DiT has no adapter inputs (exported before adapter "
                               f"support, or with --adapter-targets none); {how} to use adapters", CODE, task_uuid)
        loaded = []
        for i, ref in enumerate(refs):
            param = f"lora[{i}].model"
            path = self.resolver(ref.model, param, task_uuid)
            try:
                file_key, adapter = self._load(path, ref.model)
                self._check(adapter)
            except AdapterError as exc:
                raise RequestError(param, f"{param}: adapter {ref.model!r}: {exc}", CODE, task_uuid) from exc
            loaded.append((file_key, adapter, ref.weight))
        key = tuple((k, w) for k, _, w in loaded)
        cached = self._sets.get(key) if all(k is not None for k, _, _ in loaded) else None
        if cached is None:
            cached = AdapterSet(self._feeds([(a, w) for _, a, w in loaded if w != 0.0]),
                                [_report(a, w) for _, a, w in loaded])
            self._remember(self._sets, key, cached, self.cache_sets)
        else:
            self._sets.move_to_end(key)
        return cached

    # -- loading and checks ---------------------------------------------------------------------
    def _load(self, path: Path, name: str) -> tuple[tuple | None, Adapter]:
        key = _file_key(path)
        adapter = self._adapters.get(key) if key is not None else None
        if adapter is None:
            adapter = load_adapter(path, name)
            if key is not None:
                self._remember(self._adapters, key, adapter, self.cache_adapters)
        else:
            self._adapters.move_to_end(key)
            adapter = Adapter(name, adapter.path, adapter.format, adapter.modules, adapter.trigger_words)
        return key, adapter

    def _check(self, adapter: Adapter) -> None:
        layers = next(iter(self.kinds.values()))[0]
        missing = sorted({k for _, k in adapter.modules if k not in self.kinds})
        if missing:
            mlp = any(k.startswith("mlp.") for k in missing)
            how = ("re-export the bundle with --adapter-targets attention+mlp" if mlp
                   else "this bundle has no inputs for them")
            raise AdapterError(f"targets {', '.join(missing[:4])}, but this bundle's DiT takes adapters on "
                               f"{', '.join(sorted(self.kinds))} only; {how}")
        for (layer, kind), (a, b) in sorted(adapter.modules.items()):
            _, fin, fout = self.kinds[kind]
            if layer >= layers or a.shape[1] != fin or b.shape[0] != fout:
                raise AdapterError(f"layers.{layer}.{kind} has lora_A {list(a.shape)} / lora_B {list(b.shape)}, but "
                                   f"this bundle's DiT has {layers} layers and {kind} maps {fin} → {fout} features: "
                                   "the adapter was made for another model")

    @staticmethod
    def _remember(cache: OrderedDict, key, value, size: int) -> None:
        cache[key] = value
        while len(cache) > max(size, 1):
            cache.popitem(last=False)

    # -- feeds -----------------------------------------------------------------------------------
    def _feeds(self, weighted: list[tuple[Adapter, float]]) -> dict[str, np.ndarray]:
        feeds = {}
        for kind, (layers, fin, fout) in self.kinds.items():
            blocks_a, blocks_b = [], []
            for adapter, weight in weighted:
                mods = {layer: ab for (layer, k), ab in adapter.modules.items() if k == kind}
                if not mods:
                    continue
                r = max(a.shape[0] for a, _ in mods.values())
                a_stack = np.zeros((layers, r, fin), np.float32)
                b_stack = np.zeros((layers, fout, r), np.float32)
                for layer, (a, b) in mods.items():
                    a_stack[layer, :a.shape[0]] = a
                    b_stack[layer, :, :b.shape[1]] = b * np.float32(weight)
                blocks_a.append(a_stack)
                blocks_b.append(b_stack)
            if not blocks_a:  # rank-1 zeros: the side path adds exactly 0
                blocks_a, blocks_b = [np.zeros((layers, 1, fin), np.float32)], [np.zeros((layers, fout, 1), np.float32)]
            feeds[f"lora_a.{kind}"] = np.concatenate(blocks_a, axis=1)
            feeds[f"lora_b.{kind}"] = np.concatenate(blocks_b, axis=2)
        return feeds


def _kinds(dit_graph: dict) -> dict[str, tuple[int, int, int]]:
    """{kind: (layers, in, out)} from the manifest's DiT inputs."""
    shapes = {i["name"]: i["shape"] for i in dit_graph.get("inputs", [])}
    kinds = {}
    for name, shape in shapes.items():
        if name.startswith("lora_a."):
            kind = name[len("lora_a."):]
            b = shapes.get(f"lora_b.{kind}")
            if b is not None:
                kinds[kind] = (int(shape[0]), int(shape[2]), int(b[1]))
    return kinds


def _file_key(path: Path) -> tuple | None:
    """Identity of an adapter on disk (path, sizes, mtimes), so an edited file is re-read."""
    try:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return (str(path.resolve()),) + tuple((f.name, os.stat(f).st_size, os.stat(f).st_mtime_ns)
                                              for f in files if f.is_file())
    except OSError:
        return None


def _report(adapter: Adapter, weight: float) -> dict:
    return {"model": adapter.name, "weight": weight, "format": adapter.format, "rank": adapter.rank,
            "targets": adapter.targets, "triggerWords": adapter.trigger_words}
