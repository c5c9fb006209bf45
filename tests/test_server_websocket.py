"""Runware's WebSocket protocol frame by frame, resent taskUUIDs, webhookURL / uploadEndpoint, refused options."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid

import pytest
from serverutil import LiveServer, task, pipeline  # noqa: F401 (pipeline: shared fixtures)

pytestmark = pytest.mark.server
ws_client = pytest.importorskip("websockets.sync.client", reason="the [server] extra (websockets) is not installed")


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    live = LiveServer(pipeline, tmp_path_factory.mktemp("renders"), api_key="k")
    yield live
    live.close()


def _frames(sock, until, timeout: float = 60) -> list[dict]:
    """Frames until `until(frame)` is true (that one included)."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(sock.recv(timeout=max(0.1, deadline - time.monotonic())))
        assert ("data" in frame) != ("errors" in frame), frame  # one or the other, never both
        out.append(frame)
        if until(frame):
            return out


def _is(key, **match):
    return lambda f: any(all(x.get(k) == v for k, v in match.items()) for x in f.get(key, []))


def test_authentication_ping_sync_async_and_get_response(server):
    with ws_client.connect(f"ws://127.0.0.1:{server.port}/v1") as sock:
        # Ping is answered before authentication (runware 0.5 pings right after sending it).
        sock.send(json.dumps([{"taskType": "authentication", "apiKey": "k"}, {"taskType": "ping", "ping": True}]))
        frames = _frames(sock, _is("data", taskType="ping"))
        auth = [x for f in frames for x in f.get("data", []) if x["taskType"] == "authentication"]
        assert len(auth) == 1 and uuid.UUID(auth[0]["connectionSessionUUID"])
        # Sync, two results: each pushed as its own frame, with resultIndex; progress may come first.
        sync = task(str(uuid.uuid4()), numberResults=2, outputType="URL", steps=3)
        sock.send(json.dumps([sync]))
        seen = []
        frames = _frames(sock, lambda f: len(seen.extend(x for x in f.get("data", []) if "audioUUID" in x)
                                             or seen) == 2)
        results = [x for f in frames for x in f["data"] if "audioUUID" in x]
        assert all(len(f["data"]) == 1 for f in frames)
        assert [r["resultIndex"] for r in results] == [0, 1] and [r["seed"] for r in results] == [3, 4]
        # Async: acknowledged at once, then polled on the same socket.
        later = task(str(uuid.uuid4()), deliveryMethod="async")
        sock.send(json.dumps([later]))
        (ack,) = _frames(sock, _is("data", taskUUID=later["taskUUID"]))[-1]["data"]
        assert ack["status"] == "processing"
        sock.send(json.dumps([{"taskType": "getResponse", "taskUUID": later["taskUUID"]}]))
        frames = _frames(sock, _is("data", taskUUID=later["taskUUID"], status="success"))
        assert frames[-1]["data"][0]["audioURL"].startswith(server.base + "/audio/")
        # A resend of a finished task is a conflict, never a second render; REST follows the same rule.
        renders = server.renderer.renders
        sock.send(json.dumps([later]))
        (err,) = _frames(sock, _is("errors", code="conflictTaskUUID"))[-1]["errors"]
        assert err["taskUUID"] == later["taskUUID"] and err["taskType"] == "audioInference"
        status, body = server.post([later], {"Authorization": "Bearer k"})
        assert status == 409 and body["errors"][0]["code"] == "conflictTaskUUID"
        assert server.renderer.renders == renders
        # A bad task: an error carrying its taskUUID and taskType.
        bad = task(str(uuid.uuid4()), steps=0)
        sock.send(json.dumps([bad]))
        (err,) = _frames(sock, _is("errors", taskUUID=bad["taskUUID"]))[-1]["errors"]
        assert err["parameter"] == "steps" and err["taskType"] == "audioInference"


def test_results_are_held_across_connections(server):
    req = task(str(uuid.uuid4()), deliveryMethod="async", outputType="base64Data")
    with ws_client.connect(f"ws://127.0.0.1:{server.port}/") as sock:
        sock.send(json.dumps([{"taskType": "authentication", "apiKey": "k"}, req]))
        _frames(sock, _is("data", taskUUID=req["taskUUID"]))
    # A new socket polls it (10 s of WAV is ~2 MB of base64: over the websockets library's 1 MiB default).
    with ws_client.connect(f"ws://127.0.0.1:{server.port}/v1", max_size=None) as sock:
        sock.send(json.dumps([{"taskType": "authentication", "apiKey": "k"},
                              {"taskType": "getResponse", "taskUUID": req["taskUUID"]}]))
        frames = _frames(sock, _is("data", taskUUID=req["taskUUID"], status="success"))
        assert frames[-1]["data"][0]["audioBase64Data"].startswith("UklGR")


def test_wrong_key_and_tasks_before_authentication(server):
    with ws_client.connect(f"ws://127.0.0.1:{server.port}/v1") as sock:
        req = task(str(uuid.uuid4()))
        sock.send(json.dumps([req]))
        (err,) = _frames(sock, lambda f: True)[0]["errors"]
        assert err["code"] == "missingApiKey" and err["taskUUID"] == req["taskUUID"]
        sock.send(json.dumps([{"taskType": "authentication", "apiKey": "wrong"}]))
        (err,) = _frames(sock, lambda f: True)[0]["errors"]
        assert err["code"] == "invalidApiKey" and err["taskType"] == "authentication"
    assert server.renderer.get(req["taskUUID"]) is None


class _Sink(http.server.BaseHTTPRequestHandler):
    got: list = []

    def _take(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Sink.got.append((self.command, self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT = _take

    def log_message(self, *args):
        pass


def test_webhook_and_upload_endpoint(pipeline, tmp_path):
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    live = LiveServer(pipeline, tmp_path)  # default --webhook-allow: loopback only
    try:
        hook = f"http://127.0.0.1:{sink.server_port}"
        req = task(str(uuid.uuid4()), webhookURL=hook + "/hook", uploadEndpoint=hook + "/put", outputFormat="WAV")
        status, body = live.post([req])
        assert status == 200 and body["data"][0]["status"] == "processing"  # a webhook task is acknowledged
        deadline = time.monotonic() + 60
        while len(_Sink.got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        by_path = {path: (method, kind, data) for method, path, kind, data in _Sink.got}
        method, kind, data = by_path["/hook"]
        posted = json.loads(data)["data"][0]
        assert method == "POST" and posted["taskUUID"] == req["taskUUID"] and "audioURL" in posted
        method, kind, data = by_path["/put"]
        assert method == "PUT" and kind == "audio/wav" and data[:4] == b"RIFF"
        status, served, _ = live.request("GET", "/audio/" + posted["audioURL"].rsplit("/", 1)[1])
        assert served == data
        # Hosts not allowed, and options with no local meaning, are refused before any render.
        renders = live.renderer.renders
        for field, value, code in (("webhookURL", "http://example.com/hook", "unsupportedHost"),
                                   ("uploadEndpoint", "ftp://127.0.0.1/x", "invalidFormat"),
                                   ("routing", {"provider": "x"}, "unsupportedParameter"),
                                   ("advancedFeatures", {"a": 1}, "unsupportedParameter"),
                                   ("includeCost", "yes", "invalidType")):
            status, body = live.post([task(str(uuid.uuid4()), **{field: value})])
            assert status == 400 and body["errors"][0]["parameter"] == field, body
            assert body["errors"][0]["code"] == code
        assert live.renderer.renders == renders
    finally:
        live.close()
        sink.shutdown()
