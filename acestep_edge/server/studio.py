"""The studio page's two helpers: the server's limits and vocabularies, and a render-free request check."""

from __future__ import annotations

from typing import Callable

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from acestep_edge.runtime import noise, vocab
from acestep_edge.runtime import request as rules
from acestep_edge.runtime.audio_io import FORMATS
from acestep_edge.runtime.request import RequestError, parse_request
from acestep_edge.runtime.response import error_response
from acestep_edge.runtime.wire import error_entry, parse_body

from .wire import BODY_TOO_LARGE

CHECK_BODY_BYTES = 2**20  # the page checks with its audio replaced by a stub, so a task is small


def studio_config(max_body_bytes: int) -> dict:
    """What the page needs to build a task: the body limit (to refuse large files before upload) and the names."""
    return {
        "maxBodyBytes": max_body_bytes,
        "model": vocab.MODEL_ID,
        "tasks": list(vocab.TASKS), "sourceTasks": list(vocab.SOURCE_TASKS), "windowTasks": list(vocab.WINDOW_TASKS),
        # Which fields each task takes: the page shows a field only for these tasks.
        "sourceOptionalTasks": list(vocab.SOURCE_OPTIONAL_TASKS), "strengthTasks": list(vocab.STRENGTH_TASKS),
        "coverScaleTasks": list(vocab.COVER_SCALE_TASKS), "trackTasks": list(vocab.TRACK_TASKS),
        "trackNames": list(vocab.TRACK_NAMES), "repaintModes": list(vocab.REPAINT_MODES),
        "languages": list(vocab.VALID_LANGUAGES), "guidanceTypes": list(vocab.GUIDANCE_TYPES),
        "formats": list(FORMATS), "noiseSources": list(noise.SOURCES), "gpuPresets": list(noise.GPU_PRESETS),
        "ranges": {"duration": rules.DURATION_RANGE, "steps": rules.STEPS_RANGE, "CFGScale": rules.CFG_RANGE,
                   "numberResults": rules.NUMBER_RESULTS_RANGE, "bpm": rules.BPM_RANGE},
    }


def check_task(task: object, check_paths: Callable[[object], None]) -> list[dict]:
    """The errors POST /v1 would answer for this task before rendering (none when it would render)."""
    try:
        if isinstance(task, dict):
            task = dict(task)
            if task.pop("deliveryMethod", None) not in (None, "sync", "async"):
                raise RequestError("deliveryMethod", "deliveryMethod: use 'sync' or 'async'", "invalidEnum")
            check_paths(task)
        parse_request(task)
    except RequestError as exc:
        return error_response(exc)["errors"]
    return []


def studio_routes(max_body_bytes: int, check_paths: Callable[[object], None],
                  require_key: Callable[[HTTPRequest], Response | None]) -> list[Route]:
    """GET /studio/config and POST /studio/check (one task object → {"errors": [...]}, nothing rendered)."""

    async def config(request: HTTPRequest) -> Response:
        # The page asks GET /v1/loras only where this app has that route, so it never logs a 404.
        adapters = any(getattr(r, "path", None) == "/v1/loras" for r in request.app.routes)
        return JSONResponse({**studio_config(max_body_bytes), "adapters": adapters})

    async def check(request: HTTPRequest) -> Response:
        denied = require_key(request)
        if denied:
            return denied
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > CHECK_BODY_BYTES:
                return JSONResponse({"errors": [{"code": BODY_TOO_LARGE, "parameter": "request", "message":
                                     "request: send the task with its audio replaced by a short data URI"}]}, 413)
        try:
            tasks = parse_body(bytes(body))  # the runtime's parser: also refuses deep nesting, lone surrogates
        except RequestError as exc:
            return JSONResponse({"errors": [error_entry(exc, task_type=None)]}, 400)
        return JSONResponse({"errors": check_task(tasks[0] if len(tasks) == 1 else tasks, check_paths)})

    return [Route("/studio/config", config, methods=["GET"]), Route("/studio/check", check, methods=["POST"])]
