"""Bounded property-based fuzzing of the server over HTTP and WebSocket: hostile bodies never give a 5xx,
never an exception name, and a refused task never leaves a file."""

from __future__ import annotations

import collections
import json
import re
import time
import uuid

import pytest
from serverutil import LiveServer

pytestmark = pytest.mark.server
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (dev extra) is not installed")
ws_client = pytest.importorskip("websockets.sync.client", reason="the [server] extra (websockets) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback|File \"")
COUNTS: collections.Counter = collections.Counter()
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NASTY = ["\ud800", "\udfff x", "a" * 5000, "../../../etc/passwd", "/etc/passwd", "file:///etc/passwd",
         "file://host/x.wav", "data:audio/wav;base64,AAAA", "data:audio/wav,xx", "http://127.0.0.1/x.wav",
         "s3://b/k", "\x00", "C:\\x.wav", "%0A", "/" + "a" * 300 + ".wav", "", " ", "NaN", "-1", "1e400"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 3),
    st.from_regex(r"\A-?[1-9][0-9]{300,400}\Z").map(int),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from(NASTY))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
TOP = ["model", "positivePrompt", "negativePrompt", "seed", "CFGScale", "numberResults", "outputType",
       "outputFormat", "audioSettings", "inputs", "strength", "settings", "deliveryMethod", "includeCost",
       "webhookURL", "uploadEndpoint", "routing", "advancedFeatures", "ttl", "taskUUID", "taskType"]
SETTINGS_KEYS = ["lyrics", "bpm", "keyScale", "timeSignature", "vocalLanguage", "guidanceType", "task",
                 "referenceAudio", "repaintingStart", "repaintingEnd", "shift", "trackName", "trackClasses"]


@st.composite
def tasks(draw):
    # Small steps and duration, so the few tasks that are valid render in about a second.
    task = {"taskType": draw(st.sampled_from(["audioInference", "audioInference", "getResponse", "ping",
                                              "authentication", "imageInference", 7])),
            "taskUUID": draw(st.one_of(st.uuids().map(str), values)),
            "positivePrompt": draw(st.one_of(st.just("a test"), values)),
            "steps": draw(st.one_of(st.integers(0, 2), values)),
            "duration": draw(st.one_of(st.just(10), values)),
            "deliveryMethod": draw(st.sampled_from(["sync", "webhook", None, 3]))}
    for key in draw(st.lists(st.sampled_from(TOP), max_size=4, unique=True)):
        task[key] = draw(values)
    if draw(st.booleans()):
        task["settings"] = {k: draw(values) for k in draw(st.lists(st.sampled_from(SETTINGS_KEYS), max_size=3))}
    if draw(st.booleans()):
        task["inputs"] = {"audio": draw(st.one_of(st.sampled_from(NASTY), values))}
    if draw(st.integers(0, 4)) == 0:
        task[draw(st.text(max_size=10))] = draw(values)
    return {k: v for k, v in task.items() if v is not None or draw(st.booleans())}


bodies = st.one_of(st.lists(tasks(), min_size=1, max_size=3), tasks(), values)


def _dump(body) -> bytes:
    return json.dumps(body, ensure_ascii=True).encode()  # ascii: lone surrogates travel as \\udXXX escapes


@pytest.fixture(scope="module")
def server(demo_pipeline, tmp_path_factory):
    live = LiveServer(demo_pipeline, tmp_path_factory.mktemp("fuzz"), queue=64)
    live.delivered = set()
    yield live
    deadline = time.monotonic() + 300
    while not live.renderer.idle() and time.monotonic() < deadline:
        time.sleep(0.1)
    files = {p.name for p in live.renderer.out_dir.iterdir()}
    live.close()
    print(f"fuzz requests: {dict(COUNTS)}")
    assert files <= live.delivered, f"files no response announced (refused tasks?): {files - live.delivered}"


def _check(server, text: str) -> None:
    assert not EXCEPTION_NAME.search(text), text[:500]
    COUNTS["results"] += text.count('"audioUUID"')
    COUNTS["errors"] += text.count('"code"')
    for url in re.findall(r'"audioURL": "[^"]*/audio/([^"]+)"', text):
        server.delivered.add(url)


@settings(max_examples=200, **SETTINGS)
@given(body=bodies)
def test_http_tasks(server, body):
    COUNTS["http tasks"] += 1
    status, answer, headers = server.request("POST", "/v1", raw=_dump(body))
    assert status < 500, answer
    assert isinstance(answer, dict), answer
    _check(server, json.dumps(answer))


@settings(max_examples=80, **SETTINGS)
@given(raw=st.one_of(st.binary(max_size=300), st.sampled_from([
    b"[" * 5000, b"{" * 3000, b'[{"steps": ' + b"9" * 5000 + b"}]", b'"\\ud800"', b"\xed\xa0\x80",
    b"[NaN, Infinity]", b"[1e999999]", b"\xff\xfe[\x00]\x00", b"null", b"[]", b"[[[]]]"])),
       path=st.sampled_from(["/v1", "/", "/v1/renders", "/health", "/audio/x.wav", "/v1/tasks/x"]),
       method=st.sampled_from(["POST", "GET", "DELETE", "PUT"]))
def test_http_raw(server, raw, path, method):
    COUNTS["http raw"] += 1
    status, answer, headers = server.request(method, path, raw=raw if method in ("POST", "PUT") else None)
    assert status < 500, (method, path, raw[:80], answer)
    text = json.dumps(answer) if isinstance(answer, dict) else answer.decode("utf-8", "replace")
    _check(server, text)


@pytest.fixture(scope="module")
def socket_(server):
    with ws_client.connect(f"ws://127.0.0.1:{server.port}/v1", max_size=None) as sock:
        yield sock


@settings(max_examples=120, **SETTINGS)
@given(body=st.one_of(bodies.map(lambda b: _dump(b).decode()), st.binary(max_size=100),
                     st.sampled_from(["[" * 5000, '"\\ud800"', "[1e999999]"])))
def test_websocket_frames(server, socket_, body):
    COUNTS["websocket frames"] += 1
    socket_.send(body)  # text frames, and binary ones
    socket_.send(json.dumps([{"taskType": "ping", "ping": True}]))
    while True:  # every frame up to our pong: one of data/errors, no exception names
        text = socket_.recv(timeout=120)
        frame = json.loads(text)
        assert isinstance(frame, dict) and ("data" in frame) != ("errors" in frame), frame
        _check(server, text)
        if any(x.get("pong") for x in frame.get("data", [])):
            break
