"""The renderer deployment: one Pipeline per replica, one render at a time, results written to the shared --out-dir."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path

import ray
from ray import serve

from acestep_edge.runtime.delivery import deliver
from acestep_edge.runtime.pipeline import Cancelled, Pipeline
from acestep_edge.runtime.response import new_audio_uuid, output_filename
from acestep_edge.server.loras import LoraDir, install
from acestep_edge.server.wire import error_of

from .registry_actor import registry

log = logging.getLogger("acestep_edge.fleet")
ADAPTER_SETS = 4  # adapter sets a replica keeps ready; Serve's multiplexing routes a set to a replica holding it


def adapter_key(request) -> str:
    """The multiplexed model id of a request: its adapter set ('' for none)."""
    return json.dumps([[ref.model, ref.weight] for ref in request.lora]) if request.lora else ""


def remove_files(out_dir: Path, names) -> None:
    """Delete delivered files and any temp file a killed writer left (audio_io.write_bytes_atomic's `.NAME.*.part`)."""
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
        for part in out_dir.glob(f".{name}.*.part"):
            part.unlink(missing_ok=True)


class Renderer:
    """A Serve replica holding one Pipeline; `render` runs one task attempt and reports to the registry."""

    def __init__(self, registry_name: str, bundle: str, provider: str = "cpu", threads: int | None = None,
                 out_dir: str = "acestep-edge-renders", lora_dir: str | None = None, step_delay: float = 0.0):
        started = time.perf_counter()
        self.registry = registry(registry_name)
        self.pipeline = Pipeline.load(bundle, provider=provider, threads=threads)
        self.pipeline.adapters.cache_sets = ADAPTER_SETS
        install(self.pipeline, LoraDir(lora_dir))
        self.pipeline.warm_up()
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.step_delay = step_delay  # test-only: seconds per step, so the tiny bundle renders like a real one
        self.load_seconds = time.perf_counter() - started
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use)
            self.replica = f"pid-{os.getpid()}"
        log.info("renderer %s ready in %.2f s", self.replica, self.load_seconds)

    def info(self) -> dict:
        return {**self.pipeline.info(), "replica": self.replica, "loadSeconds": round(self.load_seconds, 3)}

    @serve.multiplexed(max_num_models_per_replica=ADAPTER_SETS)
    async def adapters(self, key: str):
        """Load an adapter set once per replica (what multiplexing routes on)."""
        from acestep_edge.runtime.adapters import LoraRef

        refs = tuple(LoraRef(model, weight) for model, weight in json.loads(key))
        return await asyncio.to_thread(self.pipeline.adapters.resolve, refs)

    async def render(self, spec: dict) -> str:
        """Render one attempt of a task; the outcome goes to the registry, the return value says which."""
        key = serve.get_multiplexed_model_id()
        if key:
            try:
                await self.adapters(key)
            except Exception:  # the render reports the adapter error itself, with its parameter
                pass
        return await asyncio.to_thread(self._render, spec)

    def _call(self, method: str, *args):
        return ray.get(getattr(self.registry, method).remote(*args), timeout=60)

    def _render(self, spec: dict) -> str:
        task_uuid, attempt, request = spec["taskUUID"], spec["attempt"], spec["request"]
        if not self._call("start", task_uuid, attempt, self.replica):
            return "skipped"  # cancelled while queued, finished, or a newer attempt owns it
        cancel = threading.Event()
        total = request.number_results
        last = [0.0]

        def progress(step: int, steps: int, index: int = 0) -> None:
            data = {"step": step, "steps": steps, "result": index, "results": total,
                    "progress": round((index + step / steps) / total, 4)}
            now = time.monotonic()
            if now - last[0] >= 0.1 or step == steps:  # the registry hears at most ~10 steps a second
                last[0] = now
                if self._call("progress", task_uuid, attempt, data):
                    cancel.set()
            if self.step_delay:
                cancel.wait(self.step_delay)

        written: list[str] = []
        try:
            results = self.pipeline.generate_all(request, progress=progress, cancel=cancel)
            if cancel.is_set():
                raise Cancelled("cancelled")
            items = []
            for index, result in enumerate(results):
                items.append(self._deliver(spec, result, index, written))
        except Cancelled:
            remove_files(self.out_dir, written)
            self._call("finish", task_uuid, attempt, "cancelled")
            return "cancelled"
        except Exception as exc:  # reported by message; the traceback stays in the replica's log
            log.exception("render of %s failed", task_uuid)
            remove_files(self.out_dir, written)
            self._call("finish", task_uuid, attempt, "error", None, error_of(exc, task_uuid=task_uuid))
            return "error"
        if not self._call("finish", task_uuid, attempt, "success", items):
            remove_files(self.out_dir, written)  # cancelled at the last moment, or superseded: never delivered
            return "dropped"
        return "success"

    def _deliver(self, spec: dict, result, index: int, written: list) -> dict:
        request = spec["request"]
        audio_uuid = new_audio_uuid()
        path = None
        if request.output_type == "URL":
            name = output_filename(request, audio_uuid)
            if not self._call("note_file", spec["taskUUID"], spec["attempt"], name):
                raise Cancelled("superseded")
            written.append(name)
            path = self.out_dir / name
        data = deliver(request, result, path, audio_uuid=audio_uuid)
        if path is not None:
            data["audioURL"] = f"{spec['base_url']}audio/{path.name}"
        if request.number_results > 1:
            data["resultIndex"] = index
        if spec.get("include_cost"):
            data["cost"] = 0  # a local render costs nothing
        return data
