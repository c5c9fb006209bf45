"""The HTTP routes: POST tasks, task events and cancel, recent renders, audio files, health, the studio page."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from starlette.requests import Request as HTTPRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from acestep_edge.runtime.wire import RequestError, error_entry, parse_body

from .outdir import MEDIA
from .state import State
from .wire import BODY_TOO_LARGE, body_of, entry

KEEPALIVE_SECONDS = 15.0
BODY_SECONDS = 30.0  # a client that sends its body slower than this is cut off (408)
STATIC = Path(__file__).resolve().parent / "static"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def reply(data: list[dict], errors: list[dict]) -> JSONResponse:
    body, status, headers = body_of(data, errors)
    return JSONResponse(body, status_code=status, headers=headers)


class TooLarge(Exception):
    pass


async def _read_body(request: HTTPRequest, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


async def _disconnect(request: HTTPRequest) -> None:
    """Returns when the client hangs up (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Routes:
    def __init__(self, state: State):
        self.s = state

    def denied(self, request: HTTPRequest) -> JSONResponse | None:
        given = self.s.access.bearer(request.headers)
        return None if self.s.access.key_ok(given) else reply([], [self.s.access.key_error(given)])

    def base_url(self, request: HTTPRequest) -> str:
        return self.s.public_url or str(request.base_url)

    # -- POST /v1 ------------------------------------------------------------------------------
    async def tasks(self, request: HTTPRequest) -> Response:
        limit = self.s.max_body_bytes
        try:
            raw = await asyncio.wait_for(_read_body(request, limit), BODY_SECONDS)
            tasks = parse_body(raw)
        except TooLarge:
            return reply([], [entry(BODY_TOO_LARGE, f"request body: larger than this server's limit of {limit} "
                                    "bytes; send less (or start the server with a larger --max-body-mb)", "request",
                                    None, None)])
        except asyncio.TimeoutError:
            return reply([], [entry("requestTimeout", f"request body: not received within {BODY_SECONDS:.0f} s",
                                    "request", None, None)])
        except RequestError as exc:
            return reply([], [error_entry(exc, task_type=None)])
        given = self.s.access.bearer(request.headers)
        rest = []
        for task in tasks:
            if isinstance(task, dict) and task.get("taskType") == "authentication":
                given = task.get("apiKey") if isinstance(task.get("apiKey"), str) else ""
            else:
                rest.append(task)
        if not self.s.access.key_ok(given):
            return reply([], [self.s.access.key_error(given)])
        owner = object()  # this HTTP exchange: its sync renders are cancelled if the client hangs up
        seen: set[str] = set()
        replies = [self.s.tasks.handle(task, self.base_url(request), seen, owner) for task in rest]
        waiting = [r.job.wait() for r in replies if r.job is not None]
        if waiting:
            done = asyncio.ensure_future(asyncio.gather(*waiting))
            gone = asyncio.ensure_future(_disconnect(request))
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                self.s.renderer.cancel_owned(owner)
                await done
            gone.cancel()
        data: list[dict] = []
        errors: list[dict] = []
        for r in replies:
            job = r.job
            if job is not None and job.state == "success":
                data += job.results
            elif job is not None:
                errors.append(dict(job.error))
            data += r.data
            errors += r.errors
        return reply(data, errors)

    # -- task events and cancel ----------------------------------------------------------------
    async def events(self, request: HTTPRequest) -> Response:
        denied = self.denied(request)
        if denied:
            return denied
        uuid = request.path_params["task_uuid"].lower()
        job = self.s.renderer.get(uuid)
        if job is None:
            return reply([], [entry("taskNotFound", "no such task on this server", "taskUUID", uuid)])

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

    async def cancel(self, request: HTTPRequest) -> Response:
        denied = self.denied(request)
        if denied:
            return denied
        uuid = request.path_params["task_uuid"].lower()
        if self.s.renderer.get(uuid) is None:
            return reply([], [entry("taskNotFound", f"no task {uuid} on this server", "taskUUID", uuid)])
        state = self.s.renderer.cancel(uuid)
        if state is not None:
            return reply([], [entry("conflictTaskFinished", f"task {uuid} already ended ({state}); nothing to "
                                    "cancel", "taskUUID", uuid)])
        return reply([{"taskType": "audioInference", "taskUUID": uuid, "status": "cancelled"}], [])

    async def renders(self, request: HTTPRequest) -> Response:
        return self.denied(request) or JSONResponse({"data": self.s.renderer.recent()})

    # -- files, health, studio -----------------------------------------------------------------
    async def audio(self, request: HTTPRequest) -> Response:
        # Audio URLs are capability URLs (a random UUID v4 each), like the hosted API's, so an <audio>
        # element can play them without a key; only files this server delivered are served.
        name = request.path_params["name"]
        opened = self.s.renderer.out.open_served(name)
        if opened is None:
            return reply([], [entry("fileNotFound", "no such audio file on this server", "audio", None, None)])
        fd, size = opened
        start, end = 0, size - 1
        status = 200
        header = request.headers.get("range")
        if header:
            match = _RANGE.fullmatch(header.strip())
            first = int(match.group(1)) if match and match.group(1) else None
            last = int(match.group(2)) if match and match.group(2) else None
            if match and first is None and last is not None:  # the last `last` bytes
                first, last = max(0, size - last), size - 1
            if not match or first is None or first >= size or (last is not None and last < first):
                os.close(fd)
                return JSONResponse({"errors": [entry("invalidRange", f"Range {header[:60]!r}: not satisfiable "
                                                      f"for {size} bytes; send bytes=START-END", "Range", None,
                                                      None)]}, status_code=416,
                                    headers={"Content-Range": f"bytes */{size}"})
            start, end, status = first, min(size - 1, last if last is not None else size - 1), 206
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        media = MEDIA[name.rsplit(".", 1)[1]]
        if request.method == "HEAD":
            os.close(fd)
            return Response(status_code=status, headers=headers, media_type=media)
        return StreamingResponse(_chunks(fd, start, end), status_code=status, headers=headers, media_type=media)

    async def health(self, request: HTTPRequest) -> Response:
        renderer = self.s.renderer
        running = renderer.running
        # Without the key: counts only (a running taskUUID would let anyone poll someone else's render).
        show = self.s.access.key_ok(self.s.access.bearer(request.headers))
        return JSONResponse({
            "status": "ok" if renderer.accepting else "draining",
            **self.s.info,
            "queue": {"depth": renderer.depth(), "capacity": renderer.queue_size,
                      "running": (running.task_uuid if show else 1) if running else (None if show else 0)},
        })

    async def studio(self, request: HTTPRequest) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")


async def _chunks(fd: int, start: int, end: int, size: int = 1 << 20):
    try:
        position = start
        while position <= end:
            chunk = await asyncio.to_thread(os.pread, fd, min(size, end - position + 1), position)
            if not chunk:
                return
            position += len(chunk)
            yield chunk
    finally:
        os.close(fd)
