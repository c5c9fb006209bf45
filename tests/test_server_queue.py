"""The server's queue: bounded load, async delivery with events, cancel, and the SIGTERM drain."""

from __future__ import annotations

import base64
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from acestep_edge.runtime.audio_io import encode_audio_bytes
from serverutil import DEMO_BUNDLE, LiveServer, task, pipeline  # noqa: F401 (pipeline: shared fixtures)

LONG = {"duration": 30, "steps": 200}  # several seconds on the tiny bundle: long enough to cancel mid-way


pytestmark = pytest.mark.server


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_load_8_clients_x_3_requests_queue_of_4(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path, queue=4)
    outcomes: dict[str, tuple[int, dict]] = {}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def client(c: int) -> None:
        start.wait(timeout=30)
        for r in range(3):
            req = task(str(uuid.uuid4()), seed=100 + 10 * c + r, outputType="base64Data", steps=3)
            status, body = live.post([req])
            with lock:
                outcomes[req["taskUUID"]] = (status, body, req)

    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads)
    finally:
        live.close()
    assert len(outcomes) == 24  # none lost
    statuses = collections.Counter(status for status, _, _ in outcomes.values())
    assert set(statuses) <= {200, 429} and statuses[200] >= 1 and statuses[429] >= 1, statuses
    for task_uuid, (status, body, req) in outcomes.items():
        if status == 429:
            (err,) = body["errors"]
            assert err["code"] == "rateLimitExceeded" and err["taskUUID"] == task_uuid and "data" not in body
            continue
        (result,) = body["data"]  # exactly one result, for this task: nothing duplicated or swapped
        assert result["taskUUID"] == task_uuid and result["seed"] == req["seed"]
        serial = pipeline.generate(req)
        assert base64.b64decode(result["audioBase64Data"]) == encode_audio_bytes(serial.audio, 48000, "WAV")
    print(f"load test: {dict(statuses)}")


def test_async_delivery_events_and_get_response(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path)
    try:
        req = task(str(uuid.uuid4()), deliveryMethod="async", steps=6, numberResults=2)
        status, body = live.post([req])
        assert status == 200 and body["data"] == [
            {"taskType": "audioInference", "taskUUID": req["taskUUID"], "status": "processing"}]
        events = live.events(req["taskUUID"])
        names = [name for name, _ in events]
        assert names[:2] == ["queued", "started"] and names[-1] == "done"
        steps = [(d["result"], d["step"]) for name, d in events if name == "progress"]
        assert steps == [(i, s) for i in range(2) for s in range(1, 7)]
        progress = [d["progress"] for name, d in events if name == "progress"]
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert names.count("result") == 2
        status, body = live.post([{"taskType": "getResponse", "taskUUID": req["taskUUID"]}])
        assert status == 200 and [r["status"] for r in body["data"]] == ["success", "success"]
        assert [r["seed"] for r in body["data"]] == [3, 4]
        for result in body["data"]:
            assert live.request("GET", result["audioURL"].removeprefix(live.base))[0] == 200
        status, body = live.post([{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}])
        assert status == 404 and body["errors"][0]["code"] == "taskNotFound"
        status, body = live.post([{"taskType": "getResponse", "taskUUID": req["taskUUID"], "x": 1}])
        assert status == 400 and body["errors"][0]["parameter"] == "x"
        status, recent, _ = live.request("GET", "/v1/renders")
        assert recent["data"][0]["taskUUID"] == req["taskUUID"] and len(recent["data"][0]["results"]) == 2
    finally:
        live.close()


def test_cancel_running_and_queued_renders_writes_nothing(pipeline, tmp_path):
    live = LiveServer(pipeline, tmp_path)
    try:
        running = task(str(uuid.uuid4()), deliveryMethod="async", **LONG)
        queued = task(str(uuid.uuid4()), deliveryMethod="async", **LONG)
        assert live.post([running, queued])[0] == 200
        status, body = live.post([{"taskType": "getResponse", "taskUUID": queued["taskUUID"]}])
        assert body["data"][0]["status"] == "processing" and body["data"][0]["queueState"] == "queued"
        # Cancel the queued one at once, the running one after its first step.
        status, body, _ = live.request("DELETE", f"/v1/tasks/{queued['taskUUID']}")
        assert status == 200 and body["data"][0]["status"] == "cancelled"
        seen = []

        def on_event(name, data):
            seen.append(name)
            if name == "progress" and data["step"] == 2:
                assert live.request("DELETE", f"/v1/tasks/{running['taskUUID']}")[0] == 200

        events = live.events(running["taskUUID"], on_event=on_event)
        assert events[-1][0] == "cancelled" and "result" not in seen
        last_step = max(d["step"] for name, d in events if name == "progress")
        assert last_step < LONG["steps"]
        for t in (running, queued):
            status, body = live.post([{"taskType": "getResponse", "taskUUID": t["taskUUID"]}])
            (err,) = body["errors"]
            assert status == 409 and err["code"] == "taskCancelled" and err["status"] == "cancelled"
            assert "nothing was written" in err["message"]
        assert _files(tmp_path) == []  # no audio, no temp file
        status, body, _ = live.request("DELETE", f"/v1/tasks/{running['taskUUID']}")
        assert status == 409 and body["errors"][0]["code"] == "conflictTaskFinished"
        assert live.request("DELETE", f"/v1/tasks/{uuid.uuid4()}")[0] == 404
        # A sync request whose render is cancelled answers with the cancel error.
        sync = task(str(uuid.uuid4()), **LONG)
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(r=live.post([sync])))
        thread.start()
        deadline = time.monotonic() + 60
        while live.renderer.running is None or live.renderer.running.task_uuid != sync["taskUUID"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert live.request("DELETE", f"/v1/tasks/{sync['taskUUID']}")[0] == 200
        thread.join(60)
        status, body = answer["r"]
        assert status == 409 and body["errors"][0]["code"] == "taskCancelled"
        assert _files(tmp_path) == []
    finally:
        live.close()


# -- SIGTERM drain (the real console script in a subprocess) -------------------------------------

def _start_server(tmp_path, drain: float):
    out = tmp_path / "renders"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "acestep_edge.cli", "serve", "--bundle", str(DEMO_BUNDLE),
                             "--port", "0", "--threads", "1", "--out-dir", str(out), "--drain-seconds", str(drain)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            break
        assert time.monotonic() < deadline and proc.poll() is None, line
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)  # keep the pipe drained
    reader.start()

    class Client(LiveServer):
        def __init__(self, port):  # a client for the subprocess' port; no server of its own
            self.port, self.base = port, f"http://127.0.0.1:{port}"

    def finished() -> bool:
        """The process ended through uvicorn's graceful shutdown (which then re-raises SIGTERM)."""
        code = proc.wait(60)
        reader.join(10)
        return code in (0, -signal.SIGTERM) and any("Application shutdown complete" in x for x in log)

    return proc, Client(int(match.group(1))), out, finished


def test_sigterm_cancels_after_drain_seconds_and_leaves_no_file(tmp_path):
    proc, client, out, finished = _start_server(tmp_path, drain=0.5)
    try:
        running = task(str(uuid.uuid4()), deliveryMethod="async", **LONG)
        queued = task(str(uuid.uuid4()), deliveryMethod="async", **LONG)
        assert client.post([running, queued])[0] == 200
        events = []

        def on_event(name, data):
            if name == "progress" and data["step"] == 1:
                proc.send_signal(signal.SIGTERM)

        events = client.events(running["taskUUID"], on_event=on_event)
        assert events[-1][0] == "cancelled" and "shutting down" in events[-1][1]["error"]["message"]
        assert finished()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _files(out) == []


def test_sigterm_lets_the_running_render_finish_within_drain_seconds(tmp_path):
    proc, client, out, finished = _start_server(tmp_path, drain=60)
    try:
        req = task(str(uuid.uuid4()), steps=60)
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(r=client.post([req])))
        thread.start()
        deadline = time.monotonic() + 60
        while client.request("GET", "/health")[1]["queue"]["running"] != req["taskUUID"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        def on_event(name, data):
            if name == "progress" and data["step"] == 5:
                proc.send_signal(signal.SIGTERM)

        events = client.events(req["taskUUID"], on_event=on_event)
        thread.join(60)
        assert finished()
    finally:
        if proc.poll() is None:
            proc.kill()
    # The render went on after SIGTERM (step 5) to its last step, and its file is complete.
    assert events[-1][0] == "done"
    assert max(d.get("step", 0) for _, d in events) == 60
    status, body = answer["r"]
    assert status == 200, body
    name = body["data"][0]["audioURL"].rsplit("/", 1)[1]
    assert _files(out) == [name] and (out / name).stat().st_size == 44 + 10 * 48000 * 2 * 2


def test_finished_jobs_kept_are_bounded_and_stale_temp_files_go(pipeline, tmp_path, monkeypatch):
    from acestep_edge.runtime.request import parse_request
    from acestep_edge.server import jobs

    # A server killed mid-write left its temp file, however recent; a file not named like ours stays.
    ours, other = tmp_path / f".{uuid.uuid4()}.wav.x1yz.part", tmp_path / ".notes.txt.x2.part"
    ours.write_bytes(b"")
    other.write_bytes(b"")
    renderer = jobs.Renderer(pipeline, tmp_path, 4)
    try:
        assert _files(tmp_path) == [other.name]
        monkeypatch.setattr(jobs, "KEEP_INLINE_BYTES", 250)
        for _ in range(5):
            job = jobs.Job(parse_request(task(str(uuid.uuid4()))), "http://127.0.0.1/")
            job.state, job.results = "success", [{"audioBase64Data": "A" * 100}]
            renderer.jobs[job.task_uuid] = job
        newest = list(renderer.jobs)[-2:]
        with renderer._cond:
            renderer._forget_old()
        assert list(renderer.jobs) == newest  # 200 inline bytes kept, the oldest dropped first
    finally:
        renderer.close()


def test_port_in_use_exits_with_a_clear_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "serve", "--bundle", str(DEMO_BUNDLE),
                               "--port", str(port), "--out-dir", str(tmp_path)], capture_output=True, text=True,
                              timeout=60)  # bounded: the worker thread must not keep the process alive
        # Found before the bundle loads: a bundle that does not exist is not what it complains about.
        early = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "serve", "--bundle", str(tmp_path / "nope"),
                                "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "address already in use" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert early.returncode != 0 and "address already in use" in early.stderr and "nope" not in early.stderr


def test_sigterm_refuses_queued_work_retryably_and_keeps_results_collectable(tmp_path):
    proc, client, out, finished = _start_server(tmp_path, drain=60)
    try:
        running = task(str(uuid.uuid4()), deliveryMethod="async", steps=60)
        queued = task(str(uuid.uuid4()), deliveryMethod="async", **LONG)
        assert client.post([running, queued])[0] == 200

        def on_event(name, data):
            if name == "progress" and data["step"] == 5:
                proc.send_signal(signal.SIGTERM)

        events = client.events(running["taskUUID"], on_event=on_event)
        assert events[-1][0] == "done"
        # The queued task: a retryable "service unavailable" with a retry hint, not "cancelled".
        status, body, headers = client.request("POST", "/v1", [{"taskType": "getResponse",
                                                                "taskUUID": queued["taskUUID"]}])
        assert status == 503 and headers.get("retry-after") == "5", body
        assert body["errors"][0]["code"] == "serviceUnavailable" and "shutting down" in body["errors"][0]["message"]
        # The render that finished during the drain can still be collected: the listener is open.
        status, body = client.post([{"taskType": "getResponse", "taskUUID": running["taskUUID"]}])
        assert status == 200 and body["data"][0]["status"] == "success", body
        assert client.request("GET", "/audio/" + body["data"][0]["audioURL"].rsplit("/", 1)[1])[0] == 200
        status, body = client.post([task(str(uuid.uuid4()))])
        assert status == 503 and body["errors"][0]["code"] == "serviceUnavailable"
        assert finished()
    finally:
        if proc.poll() is None:
            proc.kill()
