"""Build the uvicorn server around one Pipeline: JSON errors at the protocol level, and a drain that keeps listening."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from acestep_edge.runtime.pipeline import Pipeline

from .app import ServerOptions, create_app
from .jobs import Renderer
from .wire import entry

log = logging.getLogger("acestep_edge.server")
COLLECT_SECONDS = 10.0
HEADER_SECONDS = 30.0  # a client that has not sent a whole request head by then is cut off (408)  # after the drain's last render: time for clients to fetch its result
# Test-only hook (never set in production): seconds each render step sleeps, so the tiny demo bundle
# renders as long as a real one (tests of the SDKs' ping timing and reconnects).
STEP_DELAY_ENV = "ACESTEP_EDGE_TEST_STEP_DELAY"


class JSONErrorProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering unparseable requests with a Runware error object, and closing
    connections whose request head does not arrive within HEADER_SECONDS (uvicorn itself waits forever)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEADER_SECONDS, self._head_timeout)

    def connection_lost(self, exc) -> None:
        self._head_timer.cancel()
        super().connection_lost(exc)

    def _head_timeout(self) -> None:
        if self.cycle is not None or self.transport.is_closing():
            return  # a request arrived (its body has its own timeout in the route)
        body = json.dumps({"errors": [entry("requestTimeout", f"request: no complete request head within "
                                            f"{HEADER_SECONDS:.0f} s", "request", None, None)]}).encode()
        # Raw bytes: h11 cannot start a response to a request it has not parsed.
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        import h11

        body = json.dumps({"errors": [entry("invalidRequest", f"not a valid HTTP/1.1 request ({msg})", "request",
                                            None, None)]}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # the connection is past the point of a response
            pass
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: refuse new work (503, retryable), keep listening while the running render finishes
    and its client collects it, then exit. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, renderer: Renderer, drain_seconds: float,
                 collect_seconds: float = COLLECT_SECONDS):
        super().__init__(config)
        self.renderer, self.drain_seconds, self.collect_seconds = renderer, drain_seconds, collect_seconds
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining:
            return super().handle_exit(sig, frame)
        self._draining = True
        self.renderer.begin_drain(self.drain_seconds)
        threading.Thread(target=self._exit_when_drained, args=(sig, frame), daemon=True).start()

    def _exit_when_drained(self, sig, frame) -> None:
        deadline = time.monotonic() + self.drain_seconds + 5.0
        while not self.renderer.idle() and time.monotonic() < deadline:
            time.sleep(0.1)
        log.info("drained; results stay collectable for %.0f s", self.collect_seconds)
        time.sleep(self.collect_seconds)
        super().handle_exit(sig, frame)


def build_server(bundle: Path, *, host: str = "127.0.0.1", port: int = 8000, provider: str = "cpu",
                 threads: int | None = None, queue: int = 16, out_dir: Path = Path("acestep-edge-renders"),
                 api_key: str | None = None, allow_dirs=(), max_body_mb: float = 64, drain_seconds: float = 30,
                 public_url: str | None = None, cors_origins=(), webhook_allow=(),
                 collect_seconds: float = COLLECT_SECONDS, log_level: str = "info",
                 lora_dir: Path | None = None):
    """A ready uvicorn.Server (sessions created, worker started); call .run() to serve."""
    pipeline = Pipeline.load(bundle, provider=provider, threads=threads)
    renderer = Renderer(pipeline, out_dir, queue, step_delay=float(os.environ.get(STEP_DELAY_ENV, "0") or 0))
    options = ServerOptions(api_key=api_key, allow_dirs=tuple(str(d) for d in allow_dirs),
                            max_body_bytes=int(max_body_mb * 2**20), bind_host=host,
                            public_url=public_url, cors_origins=tuple(cors_origins),
                            webhook_allow=tuple(webhook_allow),
                            lora_dir=str(lora_dir) if lora_dir else None)
    config = uvicorn.Config(create_app(renderer, options), host=host, port=port, log_level=log_level,
                            http=JSONErrorProtocol, ws="websockets-sansio", ws_max_size=options.max_body_bytes,
                            timeout_graceful_shutdown=int(drain_seconds) + 10, server_header=False)
    return DrainingServer(config, renderer, drain_seconds, collect_seconds)
