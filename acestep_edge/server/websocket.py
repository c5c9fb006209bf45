"""Runware's WebSocket protocol on / and /v1: authentication, ping, sync pushes, async acks and getResponse."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from starlette.websockets import WebSocket, WebSocketDisconnect

from acestep_edge.runtime.vocab import TASK_TYPE
from acestep_edge.runtime.wire import RequestError, error_entry, parse_body

from .jobs import TERMINAL, Job
from .state import State
from .wire import entry

log = logging.getLogger("acestep_edge.server")
PROGRESS_EVERY_SECONDS = 0.5  # progress pushes per task are at most this frequent


class Connection:
    """One client socket. Every frame out is {"data": [...]} or {"errors": [...]}, never both."""

    def __init__(self, state: State, socket: WebSocket):
        self.s, self.socket = state, socket
        self.authenticated = state.access.api_key is None
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.watching: dict[str, asyncio.Task] = {}
        base = state.public_url or str(socket.base_url).replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        self.base_url = base if base.endswith("/") else base + "/"

    def send(self, key: str, items: list[dict]) -> None:
        if items:
            self.outbox.put_nowait({key: items})

    async def _sender(self) -> None:
        while True:
            frame = await self.outbox.get()
            await self.socket.send_text(json.dumps(frame))

    async def run(self) -> None:
        await self.socket.accept()
        sender = asyncio.ensure_future(self._sender())
        try:
            while True:
                message = await self.socket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                self.on_frame(raw if raw is not None else message.get("bytes") or b"")
                if sender.done():  # the socket failed while sending
                    break
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()
            for task in list(self.watching.values()):
                task.cancel()
            # Its sync renders are cancelled unless the client reconnects and asks for them in time.
            self.s.renderer.cancel_owned(self, grace=self.s.ws_grace_seconds)

    def on_frame(self, raw) -> None:
        try:
            tasks = parse_body(raw)
        except RequestError as exc:
            self.send("errors", [error_entry(exc, task_type=None)])
            return
        seen: set[str] = set()
        for task in tasks:
            kind = task.get("taskType") if isinstance(task, dict) else None
            task_uuid = task.get("taskUUID") if isinstance(task, dict) else None
            task_uuid = task_uuid if isinstance(task_uuid, str) else None
            if kind == "ping":
                self.send("data", [{"taskType": "ping", "pong": True}])
            elif kind == "authentication":
                self.authenticate(task)
            elif not self.authenticated:
                error = self.s.access.key_error(None, task_uuid)
                self.send("errors", [{**error, "taskType": kind if isinstance(kind, str) else None,
                                      "message": "authenticate first: send {\"taskType\": \"authentication\", "
                                                 "\"apiKey\": KEY}"}])
            else:
                self.on_task(task, seen)

    def authenticate(self, task: dict) -> None:
        given = task.get("apiKey") if isinstance(task.get("apiKey"), str) else None
        if not self.s.access.key_ok(given):
            self.authenticated = False
            self.send("errors", [self.s.access.key_error(given if given is not None else None)])
            return
        self.authenticated = True
        session = task.get("connectionSessionUUID")
        session = session if isinstance(session, str) and len(session) <= 64 else str(uuid.uuid4())
        self.send("data", [{"taskType": "authentication", "connectionSessionUUID": session}])

    def on_task(self, task, seen: set) -> None:
        reply = self.s.tasks.handle(task, self.base_url, seen, owner=self)
        self.send("data", reply.data)
        self.send("errors", reply.errors)
        if reply.job is not None:
            self.watch(reply.job, progress=True)
        elif isinstance(task, dict) and task.get("taskType") == "getResponse" and reply.data:
            job = self.s.renderer.get(reply.data[0]["taskUUID"])
            if job is not None and job.state not in TERMINAL:
                self.watch(job, progress=False)  # push its results when they come: no 30-s poll wait

    def watch(self, job: Job, progress: bool) -> None:
        if job.task_uuid not in self.watching:
            self.watching[job.task_uuid] = asyncio.ensure_future(self._push(job, progress))

    async def _push(self, job: Job, progress: bool) -> None:
        queue = job.subscribe()
        last = 0.0
        sent = set()
        try:
            while True:
                name, data = await queue.get()
                if name == "progress" and progress and time.monotonic() - last >= PROGRESS_EVERY_SECONDS:
                    last = time.monotonic()
                    self.send("data", [{"taskType": TASK_TYPE, "taskUUID": job.task_uuid, "status": "processing",
                                        "progress": data["progress"]}])
                elif name == "result" and data["result"] not in sent:
                    sent.add(data["result"])
                    self.send("data", [{**data["data"], "status": "success"}])
                elif name in ("error", "cancelled"):
                    self.send("errors", [{**data["error"], "status": "error"}])
                    return
                elif name == "done":
                    return
        finally:
            job.unsubscribe(queue)
            self.watching.pop(job.task_uuid, None)
