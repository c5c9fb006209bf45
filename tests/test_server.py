"""The HTTP server's wire format: example requests vs the hosted API and the CLI, errors, auth, health."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from acestep_edge.runtime.audio_io import encode_audio_bytes
from acestep_edge.runtime.request import RequestError, parse_request
from acestep_edge.runtime.response import error_response
from serverutil import (  # noqa: F401 (pipeline, server: shared fixtures)
    CLI_THREADS as THREADS, DEMO_BUNDLE, LiveServer, task, pipeline, server,
)

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parent / "examples" / "requests"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.json") if not p.name.endswith(".response.json"))


def _load_tests(name: str):
    """The bad-input tables of the CLI's own tests, so the server is checked against every case."""
    spec = importlib.util.spec_from_file_location(f"_server_{name}", TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.server


def run_cli(*args, stdin: str, cwd):
    return subprocess.run([sys.executable, "-m", "acestep_edge.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd, timeout=120)


# -- the four example requests ------------------------------------------------------------------

@pytest.mark.parametrize("request_file", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_request_matches_hosted_shape_and_cli_audio(server, request_file, tmp_path):
    """Steps and duration lowered to keep CI short (neither changes the response's shape)."""
    hosted = json.loads(request_file.with_name(request_file.stem + ".response.json").read_text())
    data = {**json.loads(request_file.read_text()), "steps": 2, "duration": 10}
    status, body = server.post([data])
    assert status == 200, body
    (result,) = body["data"]
    # Every field of the hosted response, with the same JSON type; `cost` is the hosted platform's bill.
    for key, value in hosted.items():
        if key != "cost":
            assert type(result[key]) is type(value), (key, result.get(key))
    assert (result["taskType"], result["taskUUID"], result["seed"]) == (
        hosted["taskType"], hosted["taskUUID"], hosted["seed"])
    assert uuid.UUID(result["audioUUID"]).version == 4
    assert result["audioURL"] == f"{server.base}/audio/{result['audioUUID']}.mp3"
    status, served, headers = server.request("GET", result["audioURL"].removeprefix(server.base))
    assert status == 200 and headers["content-type"] == "audio/mpeg"

    out = tmp_path / "cli.mp3"
    proc = run_cli("generate", "-", "--bundle", str(DEMO_BUNDLE), "--out", str(out), "--threads", str(THREADS),
                   stdin=json.dumps(data), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert served == out.read_bytes(), "the server and the CLI encode different audio for the same seed"


def test_number_results_and_inline_outputs(server, pipeline):
    req = task(str(uuid.uuid4()), numberResults=2, outputType="base64Data", seed=40)
    status, body = server.post([req])
    assert status == 200, body
    assert [r["seed"] for r in body["data"]] == [40, 41]
    expected = [encode_audio_bytes(r.audio, r.sample_rate, "WAV") for r in pipeline.generate_all(req)]
    assert [base64.b64decode(r["audioBase64Data"]) for r in body["data"]] == expected
    assert expected[0] != expected[1]
    status, body = server.post([task(str(uuid.uuid4()), outputType="dataURI")])
    (result,) = body["data"]
    assert result["audioDataURI"].startswith("data:audio/wav;base64,UklGR")  # "RIFF"
    assert "audioURL" not in result


def test_tasks_in_one_body_succeed_and_fail_independently(server):
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    status, body = server.post([task(good), task(bad, steps=0), task(good, seed=9)])
    assert status == 200
    assert [r["taskUUID"] for r in body["data"]] == [good]
    assert [(e["taskUUID"], e["parameter"]) for e in body["errors"]] == [(bad, "steps"), (good, "taskUUID")]
    assert body["errors"][1]["code"] == "duplicateTaskUUID"
    status, body = server.post([task(str(uuid.uuid4()), deliveryMethod="webhook")])
    assert status == 400 and body["errors"][0]["parameter"] == "deliveryMethod"
    status, body = server.post(task(str(uuid.uuid4())))  # a bare task object works too
    assert status == 200 and len(body["data"]) == 1


# -- bad inputs give the CLI's Runware errors --------------------------------------------------

CLI_CASES = _load_tests("test_runtime").BAD_INPUTS
PARSER_CASES = _load_tests("test_request").BAD
# Where the server differs on purpose: it implements async delivery, and its path guard answers
# for local paths and URLs before the parser does (tests/test_server_guard.py).
SERVER_ONLY = {"async", "duration with audio", "remote audio"}


def _changed(base: dict, change) -> dict:
    data = json.loads(json.dumps(base))
    if callable(change):
        change(data)
        return data
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("name,change,parameter", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_inputs_give_the_same_errors(server, tmp_path, name, change, parameter):
    data = _changed(task("6a1e2f2c-52a2-4f57-9d0b-0f1a9c2b7d11"), change)
    proc = run_cli("generate", "-", "--bundle", str(DEMO_BUNDLE), stdin=json.dumps(data), cwd=tmp_path)
    cli = json.loads(proc.stdout)
    status, body = server.post([data])
    assert status == 400
    assert body == cli and body["errors"][0]["parameter"] == parameter


@pytest.mark.parametrize("case", PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_parser_bad_inputs_give_the_same_errors(server, case):
    name, change, parameter, _ = case
    data = _changed(_load_tests("test_request")._base(), change)
    status, body = server.post([data])
    if name == "async":  # accepted: answered at once, then cancelled so it does not occupy the queue
        data["taskUUID"] = str(uuid.uuid4())  # the base UUID is already held (a resend is a conflict)
        status, body = server.post([data])
        assert status == 200 and body["data"][0]["status"] == "processing", body
        assert server.request("DELETE", f"/v1/tasks/{data['taskUUID']}")[0] == 200
        assert server.events(data["taskUUID"])[-1][0] == "cancelled"
        return
    if name in SERVER_ONLY:
        assert status == 400 and body["errors"][0]["parameter"] == "inputs.audio", body
        return
    with pytest.raises(RequestError) as err:
        parse_request(data)
    assert status == 400
    assert body == error_response(err.value), body


@pytest.mark.parametrize("raw,code", [(b"{not json", "invalidJSON"), (b"[]", "invalidType"), (b"42", "invalidType"),
                                      (b"\xff\xfe", "invalidJSON")])
def test_malformed_bodies(server, raw, code):
    status, body, _ = server.request("POST", "/v1", raw=raw)
    assert status == 400 and body["errors"][0]["code"] == code
    assert "Traceback" not in json.dumps(body)


def test_post_to_root_and_body_limit(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path, max_body_bytes=4096)
    try:
        status, body, _ = live.request("POST", "/", [task(str(uuid.uuid4()))])
        assert status == 200 and body["data"][0]["audioURL"].startswith(live.base + "/audio/")
        big = task(str(uuid.uuid4()), settings={"lyrics": "la " * 3000})
        status, body, _ = live.request("POST", "/v1", [big])
        assert status == 413 and body["errors"][0]["code"] == "maxBodySizeExceeded"
        status, body, _ = live.request("GET", "/no/such/thing")
        assert status == 404 and body["errors"][0]["code"] == "endpointNotFound"
    finally:
        live.close()


def test_api_key(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path, api_key="s3cret-key")
    try:
        req = task(str(uuid.uuid4()))
        status, body = live.post([req])
        assert status == 401 and body["errors"][0]["code"] == "missingApiKey"
        status, body = live.post([req], {"Authorization": "Bearer s3cret-kez"})
        assert status == 401 and body["errors"][0]["code"] == "invalidApiKey"
        status, body = live.post([{"taskType": "authentication", "apiKey": "nope"}, req])
        assert status == 401
        assert live.request("GET", "/v1/renders")[0] == 401
        assert live.request("DELETE", f"/v1/tasks/{req['taskUUID']}")[0] == 401
        assert live.request("GET", f"/v1/tasks/{req['taskUUID']}/events")[0] == 401
        status, body = live.post([req], {"Authorization": "Bearer s3cret-key"})
        assert status == 200, body
        status, body = live.post([{"taskType": "authentication", "apiKey": "s3cret-key"},
                                  task(str(uuid.uuid4()))])
        assert status == 200 and len(body["data"]) == 1
        # Audio URLs are capability URLs (random UUIDs), playable by an <audio> element without a key.
        assert live.request("GET", body["data"][0]["audioURL"].removeprefix(live.base))[0] == 200
        assert live.request("GET", "/v1/renders", headers={"Authorization": "Bearer s3cret-key"})[0] == 200
    finally:
        live.close()


def test_health_studio_and_audio_names(server):
    status, health, _ = server.request("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["bundle"]["name"] == "demo_bundle"
    assert set(health["providers"]) >= {"text_encoder", "condition_encoder", "dit", "vae_decoder"}
    assert all(p[0] == "CPUExecutionProvider" for p in health["providers"].values())
    assert health["queue"] == {"depth": 0, "capacity": 16, "running": None}
    status, page, headers = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<progress id="progress"' in page and b"/static/studio.js" in page
    status, body, _ = server.request("GET", "/v1")
    assert status == 405 and body["errors"][0]["code"] == "unsupportedMethod"
    status, script, _ = server.request("GET", "/static/studio.js")
    assert status == 200 and b"/events" in script
    for bad in ("/audio/..%2F..%2Fetc%2Fpasswd", "/audio/manifest.json", f"/audio/{uuid.uuid4()}.wav"):
        status, body, _ = server.request("GET", bad)
        assert status == 404 and body["errors"][0]["code"] in ("fileNotFound", "endpointNotFound"), bad


def test_serve_help():
    proc = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "serve", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--allow-dir", "--api-key", "--queue", "--drain-seconds", "--max-body-mb", "--out-dir"):
        assert option in proc.stdout
    assert re.search(r"127\.0\.0\.1", proc.stdout)


def test_internal_failures_are_500_without_a_traceback(pipeline, tmp_path, monkeypatch):
    live = LiveServer(pipeline, tmp_path)
    try:
        def broken_render(*args, **kwargs):
            raise RuntimeError("latents are NaN at step 1")

        monkeypatch.setattr(live.renderer.pipeline, "generate", broken_render)
        status, render_body = live.post([task(str(uuid.uuid4()))])
        assert status == 500 and render_body["errors"][0]["code"] == "internalServerError"
        assert "latents are NaN" in render_body["errors"][0]["message"]
        monkeypatch.setattr(live.renderer, "recent", lambda: 1 / 0)  # a handler bug, not a render failure
        status, handler_body, _ = live.request("GET", "/v1/renders")
        assert status == 500 and handler_body["errors"][0]["code"] == "internalServerError"
        for body in (render_body, handler_body):
            assert "Traceback" not in json.dumps(body) and 'File "' not in json.dumps(body)
        assert list(tmp_path.iterdir()) == []
    finally:
        live.close()
