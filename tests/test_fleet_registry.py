"""The fleet's job registry as a plain object (no Ray): one delivery per taskUUID, retries, cancel, bounds."""

from __future__ import annotations

import uuid

from acestep_edge.fleet import registry as registry_module
from acestep_edge.fleet.registry import JobRegistry

ABOUT = {"positivePrompt": "x", "duration": 10, "steps": 2, "seed": 1}


def new(reg: JobRegistry) -> str:
    task_uuid = str(uuid.uuid4())
    assert reg.register(task_uuid, ABOUT, "http://h/")
    return task_uuid


def test_a_task_uuid_is_taken_once_across_the_fleet():
    reg = JobRegistry()
    task_uuid = new(reg)
    assert not reg.register(task_uuid, ABOUT, "http://other/")
    assert reg.snapshot(task_uuid)["base_url"] == "http://h/"
    assert reg.snapshot(str(uuid.uuid4())) is None


def test_a_superseded_attempt_never_delivers():
    reg = JobRegistry()
    task_uuid = new(reg)
    assert reg.start(task_uuid, 1, "a") and not reg.start(task_uuid, 1, "b")  # one replica per attempt
    assert reg.note_file(task_uuid, 1, "f1.wav")
    retry, files = reg.retry(task_uuid, 1)  # replica a died
    assert retry and files == ["f1.wav"]
    assert reg.progress(task_uuid, 1, {"step": 3}) is True  # a zombie of attempt 1 is told to stop
    assert not reg.note_file(task_uuid, 1, "late.wav")
    assert reg.start(task_uuid, 2, "b") and reg.note_file(task_uuid, 2, "f2.wav")
    assert not reg.finish(task_uuid, 1, "success", [{"audioUUID": "zombie"}])
    assert reg.first_render() is None
    assert reg.finish(task_uuid, 2, "success", [{"audioUUID": "good"}])
    assert reg.first_render() == reg.snapshot(task_uuid)["finished"]
    assert not reg.finish(task_uuid, 2, "success", [{"audioUUID": "again"}])
    snap = reg.snapshot(task_uuid)
    assert (snap["state"], snap["results"], snap["renders"], snap["attempt"]) == ("success", [{"audioUUID": "good"}], 2, 2)
    assert reg.served_names() == ["f2.wav"] and reg.served_task("f1.wav") is None
    assert reg.retry(task_uuid, 2) == (False, [])  # a finished task is not retried


def test_giving_up_reports_an_error_and_returns_the_files():
    reg = JobRegistry()
    task_uuid = new(reg)
    reg.start(task_uuid, 1, "a")
    reg.note_file(task_uuid, 1, "f.wav")
    error = {"code": "serviceUnavailable", "message": "m"}
    assert reg.fail(task_uuid, 1, error) == ["f.wav"]
    assert reg.snapshot(task_uuid)["state"] == "error" and reg.snapshot(task_uuid)["error"] == error
    assert not reg.start(task_uuid, 1, "b")


def test_cancel_queued_now_running_at_the_next_step_and_the_race_with_the_last_write():
    reg = JobRegistry()
    queued, running, racing = new(reg), new(reg), new(reg)
    assert reg.cancel(queued, "gone", "taskCancelled") is None
    assert reg.snapshot(queued)["state"] == "cancelled" and not reg.start(queued, 1, "a")
    reg.start(running, 1, "a")
    assert reg.cancel(running, "stop") is None and reg.snapshot(running)["state"] == "running"
    assert reg.progress(running, 1, {"step": 1}) is True  # the replica sees it at its next step
    assert not reg.finish(running, 1, "cancelled")
    assert reg.snapshot(running)["error"]["code"] == "taskCancelled"
    reg.start(racing, 1, "a")
    reg.note_file(racing, 1, "r.wav")
    reg.cancel(racing, "late")
    assert not reg.finish(racing, 1, "success", [{"audioUUID": "r"}])  # the replica removes its file
    assert reg.snapshot(racing)["state"] == "cancelled" and reg.served_names() == []
    assert reg.cancel(racing, "again") == "cancelled" and reg.cancel(str(uuid.uuid4()), "x") == "missing"


def test_drain_and_active_count():
    reg = JobRegistry()
    first, second = new(reg), new(reg)
    reg.start(first, 1, "a")
    assert reg.active() == 2 and reg.poll([first]) == (None, {first: reg.snapshot(first)})
    reg.begin_drain(12.0)
    assert reg.poll([])[0] == 12.0
    reg.finish(first, 1, "success", [])
    reg.cancel(second, "drained")
    assert reg.active() == 0


def test_finished_records_are_bounded_by_count_and_inline_bytes(monkeypatch):
    monkeypatch.setattr(registry_module, "KEEP_FINISHED", 3)
    monkeypatch.setattr(registry_module, "KEEP_INLINE_BYTES", 10)
    reg = JobRegistry()
    done = []
    for _ in range(5):
        task_uuid = new(reg)
        reg.start(task_uuid, 1, "a")
        reg.finish(task_uuid, 1, "success", [{"audioBase64Data": "x" * 6}])
        done.append(task_uuid)
    new(reg)  # registering sweeps: at most 10 bytes of base64 kept → one record
    assert [u for u in done if reg.snapshot(u)] == done[-1:]


def test_tasks_of_a_dead_ingress_are_adopted_with_their_specs():
    reg = JobRegistry()
    spec = {"request": "REQ", "base_url": "http://h/", "include_cost": False}
    queued, running, done, other = (str(uuid.uuid4()) for _ in range(4))
    for task_uuid, owner in ((queued, "a"), (running, "a"), (done, "a"), (other, "b")):
        assert reg.register(task_uuid, ABOUT, "http://h/", owner, spec)
    reg.start(running, 1, "r1")
    reg.start(done, 1, "r2")
    reg.finish(done, 1, "success", [])
    assert "spec" not in reg.snapshot(queued) and reg.owners() == ["a", "b"]
    taken = reg.adopt("a", "c")
    assert sorted((t["taskUUID"], t["state"], t["attempt"]) for t in taken) == sorted(
        [(queued, "queued", 1), (running, "running", 1)])
    assert all(t["spec"] == spec for t in taken)
    assert reg.owners() == ["b", "c"] and reg.adopt("a", "d") == []
    assert reg.jobs[done]["spec"] is None  # a finished task holds no inputs
