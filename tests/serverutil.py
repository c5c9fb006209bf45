"""Test helpers for the HTTP server: a real uvicorn server on 127.0.0.1 (ephemeral port) and a tiny client."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest
import uvicorn  # the [server] extra: modules importing this file are marked `server`

import acestep_edge
from acestep_edge.server.app import ServerOptions, create_app
from acestep_edge.server.jobs import Renderer
from acestep_edge.server.run import JSONErrorProtocol

DEMO_BUNDLE = acestep_edge.DEMO_BUNDLE
TIMEOUT = 60  # seconds any single HTTP exchange may take in these tests


# The intra-op thread count of the session's demo pipeline and of the CLI runs the server's audio is
# compared with, so the bytes are identical.
CLI_THREADS = 1


# Fixtures shared by the server test modules (import them by name: pytest picks up imported fixtures).
@pytest.fixture(scope="module")
def pipeline(demo_pipeline):
    assert demo_pipeline.bundle.options.threads == CLI_THREADS
    return demo_pipeline


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    """A live server with the default options on the demo pipeline, one per module."""
    live = LiveServer(pipeline, tmp_path_factory.mktemp("renders"))
    yield live
    live.close()


class LiveServer:
    """uvicorn serving create_app() from a thread of the test process, on loopback only."""

    def __init__(self, pipeline, out_dir: Path, queue: int = 16, step_delay: float = 0.0, **options):
        self.renderer = Renderer(pipeline, out_dir, queue, step_delay=step_delay)
        options.setdefault("bundle_info", {"name": "demo_bundle"})
        self.options = ServerOptions(**options)
        app = create_app(self.renderer, self.options)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    http=JSONErrorProtocol, ws="websockets-sansio",
                                                    ws_max_size=self.options.max_body_bytes))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.renderer.close()
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.renderer.close()  # idempotent; frees the out-dir lock even if the lifespan did not run

    def request(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        """(status, parsed JSON or bytes, headers) over a fresh loopback connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            data = response.read()
            kind = response.getheader("content-type", "")
            parsed = json.loads(data) if kind.startswith("application/json") else data
            return response.status, parsed, dict(response.getheaders())
        finally:
            conn.close()

    def post(self, tasks, headers=None):
        status, body, _ = self.request("POST", "/v1", tasks, headers)
        return status, body

    def events(self, task_uuid: str, headers=None, until=("done", "error", "cancelled"), on_event=None):
        """Read the task's server-sent events until a terminal one; returns [(name, data)]."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        out = []
        try:
            conn.request("GET", f"/v1/tasks/{task_uuid}/events", headers=headers or {})
            response = conn.getresponse()
            assert response.status == 200, response.read()
            assert response.getheader("content-type", "").startswith("text/event-stream")
            name = None
            while True:
                line = response.readline()
                if not line:
                    return out
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    out.append((name, json.loads(line[6:])))
                    if on_event is not None:
                        on_event(name, out[-1][1])
                    if name in until:
                        return out
        finally:
            conn.close()


def task(task_uuid: str, **overrides) -> dict:
    data = {"taskType": "audioInference", "taskUUID": task_uuid, "positivePrompt": "a short test",
            "duration": 10, "steps": 2, "seed": 3, "outputFormat": "WAV"}
    data.update(overrides)
    return data
