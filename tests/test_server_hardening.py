"""The thirteen defects a hostile-client run found in the server (issue 14 §3), one test each, over real HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import time
import uuid

import numpy as np
import pytest
import soundfile as sf
from serverutil import LiveServer, task, pipeline, server  # noqa: F401 (pipeline, server: shared fixtures)

pytestmark = pytest.mark.server
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Overflow)\b|Traceback")


def _raw(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes on one connection; everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except socket.timeout:
            pass
    return out


def _wav_uri(seconds: float, rate: int = 8000) -> str:
    buffer = io.BytesIO()
    tone = (3000 * np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 220 / rate)).astype(np.int16)
    sf.write(buffer, tone, rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


# 1 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    b"[" * 1000 + b"]" * 1000,  # RecursionError in json.loads
    b'[{"taskType": "audioInference", "steps": ' + b"9" * 5000 + b"}]",  # over Python's 4,300 digits
    json.dumps([task(str(uuid.uuid4()), steps=int("9" * 400))]).encode(),  # math.isfinite overflow
    json.dumps([task(str(uuid.uuid4()), duration=int("9" * 80))]).encode(),
    b'[{"taskType": "audioInference", "x": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}]",
], ids=["deep", "huge-int", "400-digit-steps", "80-digit-duration", "deep-task"])
def test_extreme_json_is_a_400(server, body):
    status, answer, _ = server.request("POST", "/v1", raw=body)
    assert status == 400, answer
    assert answer["errors"][0]["code"].startswith(("invalid", "value"))
    assert not EXCEPTION_NAME.search(json.dumps(answer)), answer


def test_the_500_handler_names_no_exception_class(server, monkeypatch):
    monkeypatch.setattr(server.renderer, "recent", lambda: 1 / 0)
    status, answer, _ = server.request("GET", "/v1/renders")
    assert status == 500 and answer["errors"][0]["code"] == "internalServerError"
    assert "ZeroDivision" not in json.dumps(answer) and not EXCEPTION_NAME.search(json.dumps(answer))


# 2 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["taskUUID", "unknown key", "positivePrompt", "lyrics", "apiKey", "raw CESU"])
def test_lone_surrogates_are_refused_at_parse_time(server, where):
    good = str(uuid.uuid4())
    text = json.dumps([task(good)])
    if where == "taskUUID":
        text = text.replace(good, "\\ud800" + good[1:])
    elif where == "unknown key":
        text = text.replace('"seed"', '"se\\udc00ed"')
    elif where == "positivePrompt":
        text = text.replace("a short test", "a short \\ud83d test")
    elif where == "lyrics":
        text = text[:-2] + ', "settings": {"lyrics": "la \\udfff la"}}]'
    elif where == "apiKey":
        text = '[{"taskType": "authentication", "apiKey": "k\\ud800"}, ' + text[1:]
    raw = text.encode()
    if where == "raw CESU":
        raw = raw.replace(b"a short test", b"a short \xed\xa0\x80 test")
    status, answer, _ = server.request("POST", "/v1", raw=raw)
    assert status == 400, answer
    assert answer["errors"][0]["code"] in ("invalidUnicode", "invalidJSON"), answer
    assert server.renderer.get(good) is None  # nothing queued
    status, recent, _ = server.request("GET", "/v1/renders")
    assert status == 200


# 3 -------------------------------------------------------------------------------------------------
def test_an_over_long_path_component_is_a_400(pipeline, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    live = LiveServer(pipeline, tmp_path / "out", allow_dirs=(str(allowed),))
    try:
        bad = task(str(uuid.uuid4()), inputs={"audio": str(allowed / ("a" * 300 + ".wav"))},
                   settings={"task": "cover"})
        del bad["duration"]
        status, answer = live.post([bad])
        assert status == 400 and answer["errors"][0]["parameter"] == "inputs.audio", answer
        assert not EXCEPTION_NAME.search(json.dumps(answer))
    finally:
        live.close()


# 4 -------------------------------------------------------------------------------------------------
def test_sources_over_600_s_are_refused_before_decoding(server, monkeypatch):
    from acestep_edge.runtime import audio_io

    decoded = []
    real_read = audio_io.sf.read
    monkeypatch.setattr(audio_io.sf, "read", lambda *a, **k: decoded.append(1) or real_read(*a, **k))
    long_uri = _wav_uri(660)  # 8 kHz: 10 MB of WAV that would decode to 250 MB of float32 at 48 kHz
    cover = task(str(uuid.uuid4()), inputs={"audio": long_uri}, settings={"task": "cover"})
    del cover["duration"]  # a source sets the length
    status, answer = server.post([cover])
    assert status == 400, answer
    (err,) = answer["errors"]
    assert err["parameter"] == "inputs.audio" and err["code"] == "valueOutOfRange" and "600" in err["message"]
    assert decoded == []  # refused from the header
    status, answer = server.post([task(str(uuid.uuid4()), settings={"referenceAudio": long_uri})])
    assert status == 400 and answer["errors"][0]["parameter"] == "settings.referenceAudio", answer


# 5 -------------------------------------------------------------------------------------------------
def _largest_string(value, seen=None) -> int:
    seen = seen if seen is not None else set()
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max([0, *(_largest_string(v, seen) for v in value.values())])
    if isinstance(value, (list, tuple)):
        return max([0, *(_largest_string(v, seen) for v in value)])
    if hasattr(value, "__dict__") or hasattr(value, "__dataclass_fields__"):
        fields = vars(value) if hasattr(value, "__dict__") else {}
        fields = {**fields, **{k: getattr(value, k) for k in getattr(value, "__dataclass_fields__", {})}}
        return max([0, *(_largest_string(v, seen) for k, v in fields.items() if not k.startswith("_"))])
    return 0


def test_finished_jobs_drop_their_inputs(server):
    uri = _wav_uri(20, 48000)  # ~2.5 MB of base64 in the request
    req = task(str(uuid.uuid4()), settings={"referenceAudio": uri}, outputType="URL")
    status, answer = server.post([req])
    assert status == 200, answer
    job = server.renderer.get(req["taskUUID"])
    assert job.state == "success"
    assert _largest_string(job) < 10_000, "a finished job still holds its request's data URI"


# 6 -------------------------------------------------------------------------------------------------
def test_a_sync_client_that_hangs_up_cancels_its_render(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path, step_delay=0.5)
    try:
        req = task(str(uuid.uuid4()), steps=20)
        body = json.dumps([req]).encode()
        s = socket.create_connection(("127.0.0.1", live.port))
        s.sendall(b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 60
        while live.renderer.running is None and time.monotonic() < deadline:
            time.sleep(0.05)
        s.close()  # the client is gone
        job = live.renderer.get(req["taskUUID"])
        while job.state not in ("success", "error", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.state == "cancelled", job.state
        assert [p for p in tmp_path.iterdir()] == []  # no file for nobody
    finally:
        live.close()


# 7 -------------------------------------------------------------------------------------------------
def test_audio_serves_only_files_this_server_delivered(server, tmp_path):
    out = server.renderer.out_dir
    stranger = out / f"{uuid.uuid4()}.wav"
    stranger.write_bytes(b"RIFF not ours")
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF secret")
    link = out / f"{uuid.uuid4()}.wav"
    link.symlink_to(secret)
    try:
        for name in (stranger.name, link.name, f"{uuid.uuid4()}.wav%0A"):
            status, answer, _ = server.request("GET", f"/audio/{name}")
            assert status == 404 and answer["errors"][0]["code"] == "fileNotFound", (name, status, answer)
        # A delivered file still plays, and a symlink swapped in for it is not followed.
        status, answer = server.post([task(str(uuid.uuid4()))])
        path = "/audio/" + answer["data"][0]["audioURL"].rsplit("/", 1)[1]
        assert server.request("GET", path)[0] == 200
        target = out / path.rsplit("/", 1)[1]
        target.unlink()
        target.symlink_to(secret)
        assert server.request("GET", path)[0] == 404
    finally:
        stranger.unlink(missing_ok=True)
        link.unlink(missing_ok=True)


# 8 -------------------------------------------------------------------------------------------------
def test_foreign_origins_and_hosts_are_refused(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path, cors_origins=("http://app.example",))
    try:
        before = live.renderer.renders
        body = json.dumps([task(str(uuid.uuid4()))]).encode()
        # A "simple" CORS request from any web page: text/plain, no preflight.
        status, answer, _ = live.request("POST", "/v1", raw=body,
                                         headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
        assert status == 403 and answer["errors"][0]["parameter"] == "Origin", answer
        # DNS rebinding: the page's own name in Host.
        status, answer, _ = live.request("POST", "/v1", raw=body, headers={"Host": f"evil.example:{live.port}"})
        assert status == 403 and answer["errors"][0]["parameter"] == "Host", answer
        assert live.renderer.renders == before
        # The studio's own origin, and an allowed one (with CORS headers), work.
        status, _, _ = live.request("POST", "/v1", raw=body, headers={"Origin": live.base})
        assert status == 200
        status, _, headers = live.request("OPTIONS", "/v1", headers={"Origin": "http://app.example"})
        assert status == 204 and headers["access-control-allow-origin"] == "http://app.example"
        status, answer, headers = live.request("POST", "/v1", [task(str(uuid.uuid4()))],
                                               headers={"Origin": "http://app.example"})
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    finally:
        live.close()


# 9 -------------------------------------------------------------------------------------------------
def test_health_shows_only_counts_without_the_key(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path, api_key="k", step_delay=0.3)
    try:
        req = task(str(uuid.uuid4()), steps=20, deliveryMethod="async")
        assert live.post([req], {"Authorization": "Bearer k"})[0] == 200
        deadline = time.monotonic() + 60
        while live.renderer.running is None and time.monotonic() < deadline:
            time.sleep(0.05)
        anonymous = live.request("GET", "/health")[1]
        assert anonymous["queue"]["running"] == 1 and req["taskUUID"] not in json.dumps(anonymous)
        keyed = live.request("GET", "/health", headers={"Authorization": "Bearer k"})[1]
        assert keyed["queue"]["running"] == req["taskUUID"]
        live.request("DELETE", f"/v1/tasks/{req['taskUUID']}", headers={"Authorization": "Bearer k"})
    finally:
        live.close()


# 12 ------------------------------------------------------------------------------------------------
def test_protocol_errors_ranges_and_slow_bodies_get_runware_errors(server, monkeypatch):
    from acestep_edge.server import routes

    answer = _raw(server.port, b"GARBAGE\r\n\r\n", timeout=10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, answer
    assert json.loads(body)["errors"][0]["code"] == "invalidRequest"
    status, answer = server.post([task(str(uuid.uuid4()))])
    path = "/audio/" + answer["data"][0]["audioURL"].rsplit("/", 1)[1]
    status, answer, headers = server.request("GET", path, headers={"Range": "bytes=99999999-"})
    assert status == 416 and answer["errors"][0]["code"] == "invalidRange"
    status, part, headers = server.request("GET", path, headers={"Range": "bytes=0-3"})
    assert status == 206 and part == b"RIFF"
    from acestep_edge.server import run

    monkeypatch.setattr(run, "HEADER_SECONDS", 1.0)
    started = time.monotonic()
    answer = _raw(server.port, b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le", timeout=20)
    assert time.monotonic() - started < 15
    assert answer.startswith(b"HTTP/1.1 408") and b"requestTimeout" in answer, answer
    monkeypatch.setattr(routes, "BODY_SECONDS", 1.0)
    started = time.monotonic()
    answer = _raw(server.port, b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n[{", timeout=20)
    assert time.monotonic() - started < 15
    assert answer.startswith(b"HTTP/1.1 408") and b"requestTimeout" in answer, answer


# 13 ------------------------------------------------------------------------------------------------
def test_pipeline_gives_the_server_what_it_needs(pipeline):
    from pathlib import Path

    pipeline.warm_up()
    info = pipeline.info()
    assert info["bundle"]["name"] == "demo_bundle" and "dit" in info["providers"]
    calls = []
    pipeline.generate_all(task(str(uuid.uuid4()), numberResults=2, steps=2),
                          progress=lambda step, steps, index: calls.append((index, step)))
    assert calls == [(0, 1), (0, 2), (1, 1), (1, 2)]  # which result, not inferred from a restart
    server = Path(__file__).resolve().parent.parent / "acestep_edge" / "server"
    for module in ("wire", "auth", "jobs", "tasks", "routes", "websocket"):
        assert (server / f"{module}.py").is_file()
    for path in server.glob("*.py"):
        text = path.read_text()
        assert ".bundle.session(" not in text and ".bundle.manifest" not in text, path.name
        assert len(text.splitlines()) < 400, path.name
