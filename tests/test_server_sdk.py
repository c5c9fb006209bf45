"""Runware's own Python SDKs (runware 0.5, runware-sdk 1.8) against `acestep-edge serve` over WebSocket and REST."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
from sdkutil import Proxy, audio_params, run_sdk, sdk_path
from serverutil import (  # noqa: F401 (pipeline, server: shared fixtures)
    CLI_THREADS as THREADS, DEMO_BUNDLE, LiveServer, pipeline, server,
)

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def cli_audio(tmp_path_factory):
    """What `acestep-edge generate` writes for the SDK cases' request (seed 3), as WAV and as MP3."""
    out = tmp_path_factory.mktemp("cli")
    tasks = [{"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), **audio_params(outputFormat=fmt)}
             for fmt in ("WAV", "MP3")]
    proc = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", "-", "--bundle", str(DEMO_BUNDLE),
                           "--out", str(out), "--threads", str(THREADS)], input=json.dumps(tasks),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = {p.suffix: p.read_bytes() for p in out.iterdir()}
    return {"WAV": files[".wav"], "MP3": files[".mp3"]}


def _bytes(server, item: dict) -> bytes:
    if item.get("audioURL"):
        status, body, _ = server.request("GET", "/audio/" + item["audioURL"].rsplit("/audio/", 1)[1])
        assert status == 200
        return body
    if item.get("audioBase64Data"):
        return base64.b64decode(item["audioBase64Data"])
    head, data = item["audioDataURI"].split(",", 1)
    assert head == "data:audio/mpeg;base64"
    return base64.b64decode(data)


def _cases(sdk: str, transport: str) -> list[dict]:
    cases = [
        {"name": "sync URL", "params": audio_params(outputFormat="WAV", outputType="URL", deliveryMethod="sync")},
        {"name": "sync base64Data", "params": audio_params(outputType="base64Data", deliveryMethod="sync")},
        {"name": "sync dataURI", "params": audio_params(outputType="dataURI", deliveryMethod="sync")},
        {"name": "async URL", "params": audio_params(outputFormat="WAV", outputType="URL", deliveryMethod="async")},
        {"name": "numberResults 2", "params": audio_params(numberResults=2, outputType="URL", includeCost=True)},
        {"name": "validation", "params": audio_params(steps=0, deliveryMethod="sync")},
    ]
    return cases


@pytest.mark.parametrize("sdk,transport", [("runware", "websocket"), ("runware-sdk", "websocket"),
                                           ("runware-sdk", "rest")])
def test_sdk_renders_every_delivery_and_output_type(server, cli_audio, sdk, transport):
    url = f"ws://127.0.0.1:{server.port}/v1" if transport == "websocket" else f"{server.base}/v1"
    before = server.renderer.renders
    got = run_sdk(sdk, transport, url, _cases(sdk, transport))
    print(f"{sdk} over {transport}: " + ", ".join(f"{k}: {'ok' if v['ok'] else v['code']}" for k, v in got.items()))
    for name in ("sync URL", "sync base64Data", "sync dataURI", "async URL", "numberResults 2"):
        assert got[name]["ok"], (name, got[name])
    for name, fmt in (("sync URL", "WAV"), ("sync base64Data", "MP3"), ("sync dataURI", "MP3"), ("async URL", "WAV")):
        (item,) = got[name]["items"]
        assert _bytes(server, item) == cli_audio[fmt], f"{sdk}/{transport} {name}: not the CLI's audio"
    pair = got["numberResults 2"]["items"]
    assert len(pair) == 2 and {i["seed"] for i in pair} == {3, 4}
    assert all(i["cost"] == 0 for i in pair)  # includeCost: a local render costs nothing
    if sdk == "runware-sdk":  # runware 0.5's IAudio drops fields it does not know
        assert sorted(i["resultIndex"] for i in pair) == [0, 1]
    assert server.renderer.renders - before == 5  # each task rendered once; the refused one never
    refused = got["validation"]
    assert not refused["ok"] and "steps" in refused["message"]
    if sdk == "runware-sdk":  # classified by the SDK, not "unknown"
        assert refused["code"] == "validation" and refused["parameter"] == "steps", refused
    else:  # runware 0.5 raises RunwareAPIError carrying the server's code
        assert refused["raw_code"] == "valueOutOfRange", refused


def test_every_error_code_is_classified_by_runware_sdk():
    """No code this server or the runtime sends is `unknown` to runware-sdk's errors.derive_code."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = "\n".join(p.read_text() for folder in ("runtime", "acestep_edge/server") for p in (root / folder).glob("*.py"))
    codes = set(re.findall(r'RequestError\([^)]*?,\s*"([a-z][A-Za-z]+)"', text, re.S))
    codes |= set(re.findall(r'entry\(\s*"([a-z][A-Za-z]+)"', text))
    from acestep_edge.server import wire

    codes |= {v for k, v in vars(wire).items() if k.isupper() and isinstance(v, str) and v[:1].islower()
              and v != "audioInference"}
    codes |= set(wire.STATUS)
    assert {"valueOutOfRange", "rateLimitExceeded", "serviceUnavailable", "internalServerError"} <= codes
    script = ("import json,sys; from runware.errors import derive_code, is_retryable; "
              "print(json.dumps({c: [derive_code(c), is_retryable(derive_code(c))] for c in json.load(sys.stdin)}))")
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(sorted(codes)), capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(sdk_path("runware-sdk"))})
    assert proc.returncode == 0, proc.stderr
    classes = json.loads(proc.stdout)
    assert [c for c, (kind, _) in classes.items() if kind == "unknown"] == []
    assert classes["rateLimitExceeded"] == ["rateLimit", True]
    assert classes["serviceUnavailable"] == ["serverError", True]
    assert classes["internalServerError"] == ["serverError", True]
    assert classes["valueOutOfRange"][0] == "validation"


@pytest.mark.parametrize("sdk,transport", [("runware", "websocket"), ("runware-sdk", "websocket"),
                                           ("runware-sdk", "rest")])
def test_sdk_wrong_key_is_an_auth_error(pipeline, tmp_path, sdk, transport):
    live = LiveServer(pipeline, tmp_path, api_key="right-key")
    try:
        url = f"ws://127.0.0.1:{live.port}/v1" if transport == "websocket" else f"{live.base}/v1"
        case = [{"name": "wrong key", "params": audio_params(deliveryMethod="sync")}]
        (got,) = run_sdk(sdk, transport, url, case, api_key="wrong-key", timeout=120).values()
        assert not got["ok"]
        if sdk == "runware-sdk":
            assert got["code"] == "auth", got
        else:
            assert "API key is not valid" in got["message"], got
        (ok,) = run_sdk(sdk, transport, url, case, api_key="right-key").values()
        assert ok["ok"], ok
        assert live.renderer.renders == 1
    finally:
        live.close()


def test_render_longer_than_40_s_with_the_sdk_ping_timing(pipeline, tmp_path):
    """runware 0.5 pings every 5 s and drops a socket after 30 s without a pong, then resends the task."""
    live = LiveServer(pipeline, tmp_path, step_delay=4.5)  # test hook: 10 steps x 4.5 s = 45 s
    try:
        url = f"ws://127.0.0.1:{live.port}/v1"
        case = [{"name": "long", "params": audio_params(steps=10, outputType="base64Data", deliveryMethod="sync")}]
        (got,) = run_sdk("runware", "websocket", url, case, timeout=240).values()
        assert got["ok"], got
        assert got["seconds"] > 40 and len(got["items"]) == 1
        assert live.renderer.renders == 1  # never rendered again
    finally:
        live.close()


def test_reconnect_mid_render_renders_once(pipeline, tmp_path):
    """The network drops mid-render: runware 0.5 reconnects, resends the same taskUUID, gets conflictTaskUUID
    and polls; the server keeps the one render for it."""
    live = LiveServer(pipeline, tmp_path, step_delay=1.0)
    proxy = Proxy(live.port)
    params = audio_params(steps=10, outputType="URL", outputFormat="WAV", deliveryMethod="sync",
                          taskUUID=str(uuid.uuid4()))
    dropped = []

    def drop_mid_render():
        deadline = time.monotonic() + 120
        while (live.renderer.running is None or live.renderer.running.task_uuid != params["taskUUID"]) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3)
        dropped.append(proxy.drop())

    try:
        thread = threading.Thread(target=drop_mid_render, daemon=True)
        thread.start()
        (got,) = run_sdk("runware", "websocket", f"ws://127.0.0.1:{proxy.port}/v1",
                         [{"name": "reconnect", "params": params}], timeout=240).values()
        thread.join(10)
        assert dropped and dropped[0] >= 1  # the SDK's socket was cut while the render ran
        assert got["ok"], got
        (item,) = got["items"]
        assert item["taskUUID"] == params["taskUUID"]
        assert live.renderer.renders == 1
        job = live.renderer.get(params["taskUUID"])
        assert job.state == "success" and len(job.results) == 1
        assert _bytes(live, item)[:4] == b"RIFF"
    finally:
        proxy.close()
        live.close()


def test_runware_sdk_websocket_frames_over_1_mib_need_its_max_size(server, cli_audio):
    """10 s of inline WAV (~2.6 MB of base64) is over runware-sdk's default 1 MiB WebSocket frame: the
    README's note. Its connect hook lifts the limit; the audio is then the CLI's."""
    url = f"ws://127.0.0.1:{server.port}/v1"
    case = [{"name": "wav", "params": audio_params(outputFormat="WAV", outputType="base64Data",
                                                   deliveryMethod="sync")}]
    (lifted,) = run_sdk("runware-sdk", "websocket", url, case, max_size=True).values()
    assert lifted["ok"], lifted
    assert base64.b64decode(lifted["items"][0]["audioBase64Data"]) == cli_audio["WAV"]
    # With the default limit the frame is refused (close 1009) and the run never completes: bounded here.
    case[0]["timeout_ms"] = 20_000
    (default,) = run_sdk("runware-sdk", "websocket", url, case, timeout=180).values()
    assert not default["ok"] and default["code"] == "timeout", default
