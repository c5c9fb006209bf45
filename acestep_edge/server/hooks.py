"""webhookURL and uploadEndpoint: outgoing POST/PUT to allowed hosts only, on their own thread, bounded retries."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from urllib.parse import urlsplit

from acestep_edge.runtime.wire import RequestError

from .auth import is_loopback

log = logging.getLogger("acestep_edge.server")
TIMEOUT_SECONDS = 10.0
ATTEMPTS = 3  # then the delivery is dropped and logged; the result stays available to getResponse
BACKOFF_SECONDS = 0.5
BACKLOG = 256  # deliveries waiting; more are dropped (and logged) rather than holding memory


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could lead to a host the allow-list refuses
        return None


class Hooks:
    """Sends webhooks and uploads for finished results; never blocks the render worker."""

    def __init__(self, allow: Iterable[str] = ()):
        self.allow = tuple(a.strip().lower() for a in allow)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._queue: queue.Queue = queue.Queue(BACKLOG)
        self.sent: list[tuple[str, str, int]] = []  # (method, url, status) of the last deliveries, for tests/logs
        self._thread = threading.Thread(target=self._work, name="acestep-edge-hooks", daemon=True)
        self._thread.start()

    def check(self, url: object, param: str, task_uuid: str | None) -> str:
        """The URL if this server may send to it, else a RequestError naming `param`."""
        if not isinstance(url, str) or not url:
            raise RequestError(param, f"{param}: send an http(s) URL string", "invalidType", task_uuid)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(param, f"{param}: {url[:80]!r} is not an http(s) URL", "invalidFormat", task_uuid)
        host = parts.hostname.lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise RequestError(param, f"{param}: the port is not a number", "invalidFormat", task_uuid) from None
        allowed = any(a in (host, f"{host}:{port}", f"[{host}]:{port}") for a in self.allow)
        if not allowed and not (is_loopback(host) and not self.allow):
            permitted = ", ".join(self.allow) or "loopback hosts only"
            raise RequestError(param, f"{param}: this server sends only to allowed hosts ({permitted}); start it "
                               f"with --webhook-allow {host}:{port} to allow that one", "unsupportedHost", task_uuid)
        return url

    def post(self, url: str, payload: dict) -> None:
        self._put(("POST", url, json.dumps(payload).encode(), "application/json"))

    def put(self, url: str, data: bytes, content_type: str) -> None:
        self._put(("PUT", url, data, content_type))

    def _put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.warning("%s %s dropped: %d deliveries already waiting", item[0], item[1], BACKLOG)

    def _work(self) -> None:
        while True:
            method, url, data, kind = self._queue.get()
            status = self._send(method, url, data, kind)
            self.sent = [*self.sent[-63:], (method, url, status)]

    def _send(self, method: str, url: str, data: bytes, kind: str) -> int:
        status = 0
        for attempt in range(ATTEMPTS):
            request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": kind})
            try:
                with self._opener.open(request, timeout=TIMEOUT_SECONDS) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (OSError, ValueError) as exc:
                log.warning("%s %s failed: %s", method, url, exc)
                status = 0
            if 200 <= status < 300:
                return status
            time.sleep(BACKOFF_SECONDS * 2**attempt)
        log.warning("%s %s gave up after %d attempts (last status %s)", method, url, ATTEMPTS, status)
        return status
