"""The Starlette app: Runware's wire format on POST /v1 and /, task events, cancel, audio, health, studio."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from acestep_edge.runtime.request import TASK_TYPE, RequestError, parse_request
from acestep_edge.runtime.response import error_response
from acestep_edge.runtime.wire import check_unique, error_entry, error_object, parse_body

from .guard import PathGuard
from .jobs import TERMINAL, Job, Renderer, ServerError
from .studio import studio_routes

log = logging.getLogger("acestep_edge.server")
STATIC = Path(__file__).resolve().parent / "static"
# HTTP status of a response that carries errors only; anything not listed is a validation error (400).
STATUS = {"missingApiKey": 401, "invalidApiKey": 401, "notFound": 404, "fileNotFound": 404, "taskNotFound": 404,
          "methodNotAllowed": 405, "taskCancelled": 409, "taskFinished": 409, "bodyTooLarge": 413,
          "queueFull": 429, "internalError": 500, "shuttingDown": 503}
AUDIO_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(mp3|wav|flac|ogg)$")
MEDIA = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}
KEEPALIVE_SECONDS = 15.0


@dataclass
class ServerOptions:
    api_key: str | None = None
    allow_dirs: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 2**20
    bundle_info: dict = field(default_factory=dict)


_entry = error_object


def _server_error(exc: ServerError, task_type: str | None = TASK_TYPE) -> dict:
    return error_object(exc.code, exc.message, exc.parameter, exc.task_uuid, task_type)


def envelope(data: list[dict], errors: list[dict]) -> JSONResponse:
    """Runware's envelope; the status comes from the errors when nothing succeeded."""
    body: dict = {}
    if data or not errors:
        body["data"] = data
    if errors:
        body["errors"] = errors
    if data or not errors:
        status = 200
    else:
        statuses = {STATUS.get(e["code"], 400) for e in errors}
        status = statuses.pop() if len(statuses) == 1 else 400
    headers = {"Retry-After": "5"} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    pass


async def _read_body(request: HTTPRequest, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def create_app(renderer: Renderer, options: ServerOptions | None = None) -> Starlette:
    options = options or ServerOptions()
    guard = PathGuard(options.allow_dirs)

    def key_ok(given: str | None) -> bool:
        if options.api_key is None:
            return True
        # Constant time: the comparison does not stop at the first differing byte.
        return given is not None and hmac.compare_digest(given.encode("utf-8"), options.api_key.encode("utf-8"))

    def bearer(request: HTTPRequest) -> str | None:
        value = request.headers.get("authorization", "")
        return value[7:].strip() if value[:7].lower() == "bearer " else None

    def auth_error(given: str | None) -> dict:
        if given is None:
            return _entry("missingApiKey", "this server needs an API key: send 'Authorization: Bearer KEY' or "
                          "an {\"taskType\": \"authentication\", \"apiKey\": KEY} task first", "apiKey",
                          None, "authentication")
        return _entry("invalidApiKey", "the API key is not valid for this server", "apiKey", None,
                      "authentication")

    def require_key(request: HTTPRequest) -> JSONResponse | None:
        given = bearer(request)
        return None if key_ok(given) else envelope([], [auth_error(given)])

    # -- POST /v1 ------------------------------------------------------------------------------
    async def tasks_endpoint(request: HTTPRequest) -> Response:
        try:
            body = await _read_body(request, options.max_body_bytes)
        except BodyTooLarge:
            return envelope([], [_entry("bodyTooLarge", f"request body: larger than this server's limit of "
                                        f"{options.max_body_bytes} bytes; send less (start the server with a "
                                        "larger --max-body-mb)", "request", None, None)])
        try:
            tasks = parse_body(body)
        except RequestError as exc:
            return envelope([], [error_entry(exc, task_type=None)])
        given = bearer(request)
        rest = []
        for task in tasks:
            if isinstance(task, dict) and task.get("taskType") == "authentication":
                given = task.get("apiKey") if isinstance(task.get("apiKey"), str) else ""
            else:
                rest.append(task)
        if not key_ok(given):
            return envelope([], [auth_error(given)])
        slots: list[tuple[list[dict], list[dict]] | Job] = []
        seen: set[str] = set()
        for task in rest:
            slots.append(submit(task, str(request.base_url), seen))
        waiting = [s.wait() for s in slots if isinstance(s, Job)]
        if waiting:
            await asyncio.gather(*waiting)
        data: list[dict] = []
        errors: list[dict] = []
        for slot in slots:
            d, e = job_outcome(slot) if isinstance(slot, Job) else slot
            data += d
            errors += e
        return envelope(data, errors)

    def submit(task, base_url: str, seen: set[str]):
        """A Job to wait for (sync), or the (data, errors) this task answers with right away."""
        if isinstance(task, dict) and task.get("taskType") == "getResponse":
            return get_response(task)
        try:
            if isinstance(task, dict):
                task = dict(task)
                delivery = task.pop("deliveryMethod", None)
                if delivery not in (None, "sync", "async"):
                    raw_uuid = task.get("taskUUID")
                    raise RequestError("deliveryMethod", f"deliveryMethod: {delivery!r} is not supported; use "
                                       "'sync' (wait for the result) or 'async' (poll with getResponse)",
                                       "invalidEnum", raw_uuid if isinstance(raw_uuid, str) else None)
                guard.check_task(task)
            else:
                delivery = None
            req = parse_request(task)
            check_unique(req.task_uuid, seen)
            job = Job(req, base_url, delivery or "sync")
            renderer.submit(job)
        except RequestError as exc:
            return [], error_response(exc)["errors"]
        except ServerError as exc:
            return [], [_server_error(exc)]
        if job.delivery == "async":
            return [{"taskType": TASK_TYPE, "taskUUID": job.task_uuid, "status": "processing"}], []
        return job

    def job_outcome(job: Job) -> tuple[list[dict], list[dict]]:
        if job.state == "success":
            return list(job.results), []
        return [], [dict(job.error)] if job.error else []

    def get_response(task: dict):
        raw = task.get("taskUUID")
        unknown = set(task) - {"taskType", "taskUUID"}
        if unknown:
            e = _entry("unknownParameter", f"{sorted(unknown)[0]}: unknown parameter; getResponse takes taskType "
                       "and taskUUID", sorted(unknown)[0], raw if isinstance(raw, str) else None, "getResponse")
            return [], [e]
        job = renderer.get(raw.lower()) if isinstance(raw, str) else None
        if job is None:
            return [], [_entry("taskNotFound", f"taskUUID: no task {raw!r} on this server (it was never sent, "
                               "or it finished long ago)", "taskUUID", raw if isinstance(raw, str) else None,
                               "getResponse")]
        if job.state == "success":
            return [{**r, "status": "success"} for r in job.results], []
        if job.state in TERMINAL:
            return [], [{**job.error, "status": job.state}]
        done = [{**r, "status": "success"} for r in job.results]
        progress = job.events[-1][1].get("progress", 0.0) if job.events else 0.0
        return done + [{"taskType": TASK_TYPE, "taskUUID": job.task_uuid, "status": "processing",
                        "queueState": job.state, "progress": progress}], []

    # -- task events and cancel ----------------------------------------------------------------
    async def events_endpoint(request: HTTPRequest) -> Response:
        denied = require_key(request)
        if denied:
            return denied
        job = renderer.get(request.path_params["task_uuid"].lower())
        if job is None:
            return envelope([], [_entry("taskNotFound", "no such task on this server", "taskUUID",
                                        request.path_params["task_uuid"])])

        async def stream():
            queue = job.subscribe()
            try:
                while True:
                    try:
                        name, data = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
                    if name in ("done", "error", "cancelled"):
                        return
            finally:
                job.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def cancel_endpoint(request: HTTPRequest) -> Response:
        denied = require_key(request)
        if denied:
            return denied
        uuid = request.path_params["task_uuid"].lower()
        try:
            state = renderer.cancel(uuid)
        except ServerError as exc:
            return envelope([], [_server_error(exc)])
        if state is not None:
            return envelope([], [_entry("taskFinished", f"task {uuid} already ended ({state}); nothing to "
                                        "cancel", "taskUUID", uuid)])
        return envelope([{"taskType": TASK_TYPE, "taskUUID": uuid, "status": "cancelled"}], [])

    async def renders_endpoint(request: HTTPRequest) -> Response:
        denied = require_key(request)
        return denied or JSONResponse({"data": renderer.recent()})

    # -- files, health, studio -----------------------------------------------------------------
    async def audio_endpoint(request: HTTPRequest) -> Response:
        # Audio URLs are capability URLs (a random UUID v4 each), like the hosted API's, so an
        # <audio> element can play them without a key; only names this server writes are served.
        name = request.path_params["name"]
        path = renderer.out_dir / name
        if not AUDIO_NAME.match(name) or not path.is_file():
            return envelope([], [_entry("fileNotFound", "no such audio file on this server", "audio")])
        return FileResponse(path, media_type=MEDIA[name.rsplit(".", 1)[1]])

    async def health_endpoint(request: HTTPRequest) -> Response:
        bundle = renderer.pipeline.bundle
        return JSONResponse({
            "status": "ok" if renderer.accepting else "draining",
            "bundle": options.bundle_info,
            "providers": bundle.providers_in_use(),
            "queue": {"depth": renderer.depth(), "capacity": renderer.queue_size,
                      "running": renderer.running.task_uuid if renderer.running else None},
        })

    async def studio(request: HTTPRequest) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def not_found(request, exc) -> Response:
        return envelope([], [_entry("notFound", f"{request.url.path}: no such endpoint; POST tasks to /v1",
                                    None, None, None)])

    async def not_allowed(request, exc) -> Response:
        return envelope([], [_entry("methodNotAllowed", f"{request.method} {request.url.path}: method not "
                                    "allowed; POST tasks to /v1", None, None, None)])

    async def server_error(request, exc) -> Response:
        log.exception("unhandled error on %s", request.url.path)  # the traceback stays in the log
        return JSONResponse({"errors": [_entry("internalError", f"{type(exc).__name__}: {exc}", None, None,
                                               None)]}, status_code=500)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(renderer.close)

    routes = [
        Route("/", studio, methods=["GET"]),
        Route("/", tasks_endpoint, methods=["POST"]),
        Route("/v1", tasks_endpoint, methods=["POST"]),
        Route("/v1/tasks/{task_uuid}/events", events_endpoint, methods=["GET"]),
        Route("/v1/tasks/{task_uuid}", cancel_endpoint, methods=["DELETE"]),
        Route("/v1/renders", renders_endpoint, methods=["GET"]),
        Route("/audio/{name}", audio_endpoint, methods=["GET", "HEAD"]),
        Route("/health", health_endpoint, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        *studio_routes(options.max_body_bytes, guard.check_task, require_key),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: not_found, 405: not_allowed, Exception: server_error})
