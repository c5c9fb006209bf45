"""The fleet's job registry: one record per taskUUID, shared by every ingress and renderer replica.

It runs as a one-replica Serve deployment (deleted with the application), so no job state lives in
one ingress replica's memory: getResponse, events and cancel work from any ingress replica, and a
render's completion is accepted once per taskUUID (the attempt that owns it), never twice.
"""

from __future__ import annotations

import time

from acestep_edge.runtime.wire import error_object

TERMINAL = ("success", "error", "cancelled")
KEEP_NAMES = 100_000  # delivered file names any ingress may serve (oldest forgotten first), as the server
KEEP_FINISHED = 4096  # finished records kept for getResponse; oldest go first
KEEP_SECONDS = 3600.0
KEEP_INLINE_BYTES = 256 * 2**20  # base64 audio held among finished records (oldest go first), as the server
INLINE_FIELDS = ("audioBase64Data", "audioDataURI")


class JobRegistry:
    """Plain state machine per task: queued → running → success | error | cancelled; attempts guard retries."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.served: dict[str, str] = {}  # audio file name → taskUUID, for any ingress's /audio route
        self.drain_seconds: float | None = None  # set on SIGTERM: ingress replicas stop taking work
        self.first_success: float | None = None  # wall time of the fleet's first delivered render

    def first_render(self) -> float | None:
        return self.first_success

    def begin_drain(self, seconds: float) -> None:
        self.drain_seconds = seconds

    def active(self) -> int:
        """Tasks not yet ended (queued or rendering), over the whole fleet."""
        return sum(j["state"] not in TERMINAL for j in self.jobs.values())

    def poll(self, uuids: list[str]) -> tuple[float | None, dict[str, dict]]:
        """What an ingress replica polls: the drain (if any) and the records of its unfinished jobs."""
        return self.drain_seconds, self.snapshots(uuids)

    # -- ingress side ----------------------------------------------------------------------
    def register(self, task_uuid: str, about: dict, base_url: str, owner: str | None = None,
                 spec: dict | None = None) -> bool:
        """A new task taken by ingress `owner` (its actor name), with what a renderer needs (`spec`, kept until
        the task ends so another ingress can send it if the owner dies); False when the taskUUID is known."""
        self._forget_old()
        if task_uuid in self.jobs:
            return False
        self.jobs[task_uuid] = {"state": "queued", "attempt": 1, "replica": None, "cancel": None,
                                "progress": None, "results": [], "error": None, "files": [], "about": about,
                                "base_url": base_url, "created": time.time(), "finished": None, "renders": 0,
                                "owner": owner, "spec": spec}
        return True

    def snapshot(self, task_uuid: str) -> dict | None:
        job = self.jobs.get(task_uuid)
        return None if job is None else {k: v for k, v in job.items() if k not in ("files", "spec")}

    def owners(self) -> list[str]:
        """The ingress replicas that hold unfinished tasks."""
        return sorted({j["owner"] for j in self.jobs.values() if j["state"] not in TERMINAL and j["owner"]})

    def adopt(self, dead: str, owner: str) -> list[dict]:
        """Ingress `dead` is gone: `owner` takes its unfinished tasks; their specs, attempts and states."""
        taken = []
        for task_uuid, job in self.jobs.items():
            if job["owner"] == dead and job["state"] not in TERMINAL:
                job["owner"] = owner
                taken.append({"taskUUID": task_uuid, "spec": job["spec"], "attempt": job["attempt"],
                              "state": job["state"], "about": job["about"], "created": job["created"]})
        return taken

    def snapshots(self, uuids: list[str]) -> dict[str, dict]:
        return {u: self.snapshot(u) for u in uuids if u in self.jobs}

    def cancel(self, task_uuid: str, message: str, code: str = "taskCancelled") -> str | None:
        """None if the task was cancelled (queued: now; running: its replica stops at its next step),
        else the state it had already ended in ('missing' when unknown)."""
        job = self.jobs.get(task_uuid)
        if job is None:
            return "missing"
        if job["state"] in TERMINAL:
            return job["state"]
        error = error_object(code, message, None, task_uuid)
        if job["state"] == "queued":
            self._end(job, "cancelled", error=error)
        else:
            job["cancel"] = error
        return None

    def retry(self, task_uuid: str, attempt: int) -> tuple[bool, list[str]]:
        """The replica rendering `attempt` died: (may retry, files that attempt may have begun)."""
        job = self.jobs.get(task_uuid)
        if job is None or job["state"] in TERMINAL or job["attempt"] != attempt:
            return False, []
        files, job["files"] = job["files"], []
        if job["cancel"] is not None:  # cancelled while its replica died: nothing to retry
            self._end(job, "cancelled", error=job["cancel"])
            return False, files
        job["attempt"] += 1
        job["state"], job["replica"], job["progress"] = "queued", None, None
        return True, files

    def fail(self, task_uuid: str, attempt: int, error: dict) -> list[str]:
        """Give up on the task with a Runware error; the files its attempts may have begun."""
        job = self.jobs.get(task_uuid)
        if job is None or job["state"] in TERMINAL or job["attempt"] != attempt:
            return []
        files, job["files"] = job["files"], []
        self._end(job, "error", error=error)
        return files

    def served_task(self, name: str) -> str | None:
        return self.served.get(name)

    def served_names(self) -> list[str]:
        return list(self.served)

    # -- renderer side ---------------------------------------------------------------------
    def start(self, task_uuid: str, attempt: int, replica: str) -> bool:
        """The replica may render this attempt now (False: cancelled, finished, or a newer attempt owns it)."""
        job = self.jobs.get(task_uuid)
        if job is None or job["state"] != "queued" or job["attempt"] != attempt:
            return False
        job["state"], job["replica"] = "running", replica
        job["renders"] += 1
        return True

    def progress(self, task_uuid: str, attempt: int, data: dict) -> bool:
        """Record a step; True when the replica must stop (cancelled, or its attempt was superseded)."""
        job = self.jobs.get(task_uuid)
        if job is None or job["attempt"] != attempt or job["state"] != "running":
            return True
        job["progress"] = data
        return job["cancel"] is not None

    def note_file(self, task_uuid: str, attempt: int, name: str) -> bool:
        """Before a replica writes `name`: remember it, so a replica killed mid-write leaves nothing behind."""
        job = self.jobs.get(task_uuid)
        if job is None or job["attempt"] != attempt or job["state"] != "running":
            return False
        job["files"].append(name)
        return True

    def finish(self, task_uuid: str, attempt: int, state: str, results: list | None = None,
               error: dict | None = None) -> bool:
        """The attempt ended; accepted once (False: the caller removes its files, they are not delivered)."""
        job = self.jobs.get(task_uuid)
        if job is None or job["state"] != "running" or job["attempt"] != attempt:
            return False
        if state == "success" and job["cancel"] is not None:  # a cancel won the race with the last write
            state, results, error = "cancelled", [], job["cancel"]
        if state == "cancelled" and error is None:
            error = job["cancel"]
        self._end(job, state, results or [], error)
        if state != "success":
            return False
        self.first_success = self.first_success or job["finished"]
        for name in job["files"]:
            self.served[name] = task_uuid
        for name in list(self.served)[:max(0, len(self.served) - KEEP_NAMES)]:
            del self.served[name]
        return True

    # -- bookkeeping -----------------------------------------------------------------------
    @staticmethod
    def _end(job: dict, state: str, results: list | None = None, error: dict | None = None) -> None:
        job["state"], job["results"], job["error"], job["finished"] = state, results or [], error, time.time()
        job["spec"] = None  # its inputs (data URIs) are not held once it ends

    def _forget_old(self) -> None:
        now = time.time()
        done = [u for u, j in self.jobs.items() if j["state"] in TERMINAL]
        old = [u for u in done if now - self.jobs[u]["finished"] > KEEP_SECONDS]
        old += [u for u in done[:max(0, len(done) - KEEP_FINISHED)] if u not in old]
        inline = sum(_inline_bytes(self.jobs[u]) for u in done if u not in old)
        for u in done:
            if inline <= KEEP_INLINE_BYTES:
                break
            if u not in old:
                old.append(u)
                inline -= _inline_bytes(self.jobs[u])
        for u in old:  # its files stay served (by name, up to KEEP_NAMES), as the server's do
            del self.jobs[u]


def _inline_bytes(job: dict) -> int:
    return sum(len(r.get(f, "")) for r in job["results"] for f in INLINE_FIELDS)
