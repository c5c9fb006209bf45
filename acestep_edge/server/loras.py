"""Adapters on the server: request names resolve only inside `--lora-dir`, and `GET /v1/loras` lists them.

The same rules as `--allow-dir` (server/guard.py): a name is a path relative to the folder; `..`,
absolute paths, URIs and symlinks that resolve outside the folder are refused before anything is read.
A listed adapter is a `.safetensors` file or a folder holding one (a PEFT `adapter_model.safetensors`,
a LyCORIS `lokr_weights.safetensors`).
"""

from __future__ import annotations

import os
from pathlib import Path

from acestep_edge.runtime.adapter_formats import PICKLE_SUFFIXES
from acestep_edge.runtime.request import RequestError

CODE = "invalidLora"  # as runtime/adapters.py; the path refusals share the guard's invalidPath


class LoraDir:
    """The folder adapters are served from (None: the server takes no adapters)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(os.path.realpath(root)) if root is not None else None

    def resolve(self, name: str, param: str, task_uuid: str | None = None) -> Path:
        """The adapter path for a request's `lora[i].model` name; RequestError when it may not be read."""
        if self.root is None:
            raise RequestError(param, f"{param}: adapter {name!r}: this server takes no adapters (it was started "
                               "without --lora-dir)", "invalidPath", task_uuid)
        if "\x00" in name or "://" in name or name.startswith(("/", "\\", "~")) or os.path.isabs(name):
            raise RequestError(param, f"{param}: adapter {name!r}: send the adapter's name as GET /v1/loras lists "
                               "it (a path relative to the server's --lora-dir), not a path or URI",
                               "invalidPath", task_uuid)
        resolved = Path(os.path.realpath(self.root / name))  # resolves `..` and symlinks without opening
        if resolved != self.root and self.root not in resolved.parents:
            raise RequestError(param, f"{param}: adapter {name!r} is outside the server's --lora-dir "
                               "(a `..` or a symlink out of it); use a name from GET /v1/loras",
                               "invalidPath", task_uuid)
        if not resolved.exists():
            raise RequestError(param, f"{param}: adapter {name!r}: no such adapter in the server's --lora-dir; "
                               "GET /v1/loras lists them", CODE, task_uuid)
        return resolved

    def listing(self) -> list[dict]:
        """Adapters directly in the folder (files and folders), by name, with their size in bytes."""
        if self.root is None or not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            real = Path(os.path.realpath(entry))
            if real != self.root and self.root not in real.parents:
                continue  # a symlink out of the folder is never listed (nor readable)
            if real.is_file() and real.suffix.lower() == ".safetensors":
                found.append({"name": entry.name, "kind": "file", "bytes": real.stat().st_size})
            elif real.is_dir():
                weights = [p for p in real.glob("*.safetensors") if p.is_file()]
                if weights:
                    found.append({"name": entry.name, "kind": "folder", "bytes": sum(p.stat().st_size for p in weights)})
            elif real.suffix.lower() in PICKLE_SUFFIXES:
                found.append({"name": entry.name, "kind": "pickle (refused: convert to safetensors)", "bytes": 0})
        return found


def install(pipeline, lora_dir: LoraDir) -> None:
    """Make the pipeline resolve request adapter names through `lora_dir`."""
    pipeline.adapters.resolver = lora_dir.resolve


def check_request(pipeline, request) -> None:
    """Read and check a request's adapters before it is queued (RequestError → HTTP 400, nothing rendered)."""
    if request.lora:
        pipeline.adapters.resolve(request.lora, request.task_uuid)


def route(lora_dir: LoraDir, guard=None):
    """`GET /v1/loras` → {"data": [{"name", "kind", "bytes"}], "loraDir": folder or null}; `guard(request)`
    returns an error response (auth) or None."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def loras_endpoint(request):
        denied = guard(request) if guard is not None else None
        if denied is not None:
            return denied
        return JSONResponse({"data": lora_dir.listing(), "loraDir": str(lora_dir.root) if lora_dir.root else None})

    return Route("/v1/loras", loras_endpoint, methods=["GET"])
