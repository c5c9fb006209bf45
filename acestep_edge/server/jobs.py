"""The render queue: one Pipeline, one worker thread, a bounded FIFO of jobs with events, cancel and a drain."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from acestep_edge.runtime.pipeline import Cancelled, Pipeline
from acestep_edge.runtime.request import Request

from .outdir import OutDir
from .wire import QUEUE_FULL, UNAVAILABLE, ServerError, entry, error_of

log = logging.getLogger("acestep_edge.server")

TERMINAL = ("success", "error", "cancelled")
KEEP_FINISHED = 64  # finished jobs held for getResponse (any connection) and the studio's recent renders
KEEP_SECONDS = 3600.0  # and for at most this long
KEEP_INLINE_BYTES = 256 * 2**20  # and at most this much base64 audio among them (oldest go first)
INLINE_FIELDS = ("audioBase64Data", "audioDataURI")


@dataclass
class Delivery:
    """How a task's results travel, beside the request itself (Runware platform options)."""

    mode: str = "sync"  # sync: the submitting connection waits; async: getResponse / webhook
    include_cost: bool = False
    webhook: str | None = None
    upload: str | None = None


@dataclass
class Job:
    """One audioInference task: its state, delivered results, and an event log that SSE and WebSocket replay."""

    request: Request | None
    base_url: str
    delivery: Delivery = field(default_factory=Delivery)
    owner: object = None  # the connection waiting for a sync job; cancelled with it
    state: str = "queued"
    results: list = field(default_factory=list)
    error: dict | None = None
    files: list = field(default_factory=list)
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_reason: str = "cancelled by the client"

    def __post_init__(self):
        r = self.request
        self.task_uuid = r.task_uuid
        # What the studio lists; the request itself (maybe a 60-MB data URI) is dropped when the job ends.
        self.about = {"positivePrompt": r.positive_prompt[:200], "duration": r.duration, "steps": r.steps,
                      "seed": r.seed}
        self.cancel_event = threading.Event()
        self.events: list[tuple[str, dict]] = []
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._lock = threading.Lock()

    @property
    def sync(self) -> bool:
        return self.delivery.mode == "sync" and self.delivery.webhook is None

    # -- events (published from any thread, consumed on event loops) ---------------------------
    def publish(self, name: str, **data) -> None:
        event = (name, {"taskUUID": self.task_uuid, "status": self.state, **data})
        with self._lock:
            if name != "progress":  # progress is live only: a late subscriber needs the latest, not all
                self.events.append(event)
            else:
                self.last_progress = data
            watchers = list(self._watchers)
        for loop, queue in watchers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that loop is closed: its client is gone
                pass

    def subscribe(self) -> asyncio.Queue:
        """A queue of (name, data) events: everything so far, then live ones until a terminal event."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            for event in self.events:
                queue.put_nowait(event)
            self._watchers.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._watchers = [w for w in self._watchers if w[1] is not queue]

    async def wait(self) -> None:
        queue = self.subscribe()
        try:
            while self.state not in TERMINAL:
                await queue.get()
        finally:
            self.unsubscribe(queue)

    def progress(self) -> float:
        return getattr(self, "last_progress", {}).get("progress", 0.0)

    def summary(self) -> dict:
        """What the studio's recent-renders list shows."""
        return {"taskUUID": self.task_uuid, "status": self.state, **self.about, "created": self.created,
                "results": [{k: v for k, v in x.items() if k in ("audioUUID", "audioURL", "seed")}
                            for x in self.results],
                "error": self.error}


class Renderer:
    """Owns the Pipeline; renders queued jobs one at a time, in order, on a worker thread."""

    def __init__(self, pipeline: Pipeline, out_dir: Path, queue_size: int = 16, hooks=None,
                 step_delay: float = 0.0):
        self.pipeline, self.queue_size, self.hooks = pipeline, queue_size, hooks
        # Test-only: seconds to sleep after each step, so a tiny bundle renders as long as a real one.
        self.step_delay = step_delay
        pipeline.warm_up()  # every session now, not on the first request
        self.out = OutDir(out_dir)
        self.out_dir = self.out.path
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.running: Job | None = None
        self.accepting = True
        self.renders = 0  # renders started, for tests and /health
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._drain_deadline = float("inf")
        # Not a daemon: at exit Python waits for it, so a write in progress completes (atomically).
        self._thread = threading.Thread(target=self._work, name="acestep-edge-renderer")
        self._thread.start()

    # -- called from request handlers ----------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            self._admit(job)
            self.jobs[job.task_uuid] = job
            self._queue.append(job)
            position = len(self._queue)
            self._cond.notify()
        job.publish("queued", position=position)

    def get(self, task_uuid: str) -> Job | None:
        with self._cond:
            return self.jobs.get(task_uuid)

    def cancel(self, task_uuid: str, reason: str = "cancelled by the client", code: str = "taskCancelled") -> str | None:
        """Cancel a queued or running job; None if it did, else the state it had already ended in."""
        with self._cond:
            job = self.jobs.get(task_uuid)
            if job is None:
                raise ServerError("taskNotFound", f"no task {task_uuid} on this server", "taskUUID", task_uuid)
            if job.state in TERMINAL:
                return job.state
            job.cancel_reason = reason
            job.cancel_event.set()
            if job.state == "queued":
                self._queue.remove(job)
                self._finish_cancelled(job, reason, code)
            return None  # a running job stops at its next step and then reports cancelled

    def cancel_owned(self, owner: object, grace: float = 0.0) -> None:
        """The connection `owner` is gone: cancel its unfinished sync jobs (after `grace`, unless reclaimed)."""
        with self._cond:
            mine = [j for j in self.jobs.values() if j.owner is owner and j.sync and j.state not in TERMINAL]

        def drop() -> None:
            for job in mine:
                if job.owner is owner and job.state not in TERMINAL:
                    log.info("client of %s disconnected: cancelling it", job.task_uuid)
                    self.cancel(job.task_uuid, "cancelled: its client disconnected")

        if mine and grace > 0:
            timer = threading.Timer(grace, drop)
            timer.daemon = True
            timer.start()
        elif mine:
            drop()

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def idle(self) -> bool:
        with self._cond:
            return self.running is None and not self._queue

    def recent(self) -> list[dict]:
        with self._cond:
            return [job.summary() for job in reversed(self.jobs.values())]

    # -- shutdown ------------------------------------------------------------------------------
    def begin_drain(self, drain_seconds: float) -> None:
        """Stop taking work, refuse what waits (retryable), give the running render `drain_seconds` to finish."""
        with self._cond:
            if not self.accepting:
                return
            self.accepting = False
            self._drain_deadline = time.monotonic() + drain_seconds
            waiting = list(self._queue)
        for job in waiting:
            self.cancel(job.task_uuid, "not started: the server is shutting down; retry in a few seconds or "
                        "on another instance", UNAVAILABLE)
        running = self.running
        if running is not None:
            log.info("draining: %s may finish for %.0f s", running.task_uuid, drain_seconds)
            timer = threading.Timer(drain_seconds, self._cancel_if_running, (running,))
            timer.daemon = True
            timer.start()

    def _cancel_if_running(self, job: Job) -> None:
        if job.state not in TERMINAL:
            log.info("drain time is up: cancelling %s", job.task_uuid)
            self.cancel(job.task_uuid, "stopped: the server is shutting down and its drain time is up; retry "
                        "on another instance or after it restarts", UNAVAILABLE)

    def close(self, margin: float = 30.0) -> None:
        """Drain (now, unless a drain already began) and stop the worker; waits for the drain's end."""
        self.begin_drain(0.0)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(max(0.0, self._drain_deadline - time.monotonic()) + margin)
        self.out.close()

    # -- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop and not self._queue:
                    return
                job = self._queue.popleft()
                job.state = "running"
                self.running = job
                self.renders += 1
            job.publish("started")
            try:
                self._render(job)
            finally:
                with self._cond:
                    self.running = None

    def _render(self, job: Job) -> None:
        request = job.request
        total = request.number_results

        def progress(step: int, steps: int, index: int = 0) -> None:
            job.publish("progress", step=step, steps=steps, result=index, results=total,
                        progress=round((index + step / steps) / total, 4))
            if self.step_delay:
                job.cancel_event.wait(self.step_delay)

        try:
            # The CLI's own call: the same seeds (seed, seed+1, ...), conditioning and audio.
            results = self.pipeline.generate_all(request, progress=progress, cancel=job.cancel_event)
            if job.cancel_event.is_set():
                raise Cancelled("cancelled")
            for index, result in enumerate(results):
                data = self.out.deliver(job, request, result, index)
                job.results.append(data)
                job.publish("result", result=index, results=total, data=data)
                self._hook(job, data)
        except Cancelled:
            with self._cond:
                self._finish_cancelled(job, job.cancel_reason)
            return
        except Exception as exc:  # reported by message; the type and traceback go to the log only
            log.exception("render of %s failed", job.task_uuid)
            self._finish_error(job, exc)
            return
        with self._cond:
            if job.cancel_event.is_set():  # a DELETE won the race with the last write
                self._finish_cancelled(job, job.cancel_reason)
                return
            job.request, job.finished = None, time.time()  # its inputs (data URIs) are not held once it ends
            job.state = "success"
        job.publish("done", data=job.results)

    def _hook(self, job: Job, data: dict | None, error: dict | None = None) -> None:
        if self.hooks is None:
            return
        if job.delivery.webhook:
            self.hooks.post(job.delivery.webhook, {"data": [data]} if data else {"errors": [error]})
        if job.delivery.upload and data:
            audio, kind = self.out.audio_bytes(data, job.request.output_format)
            self.hooks.put(job.delivery.upload, audio, kind)

    def _finish_cancelled(self, job: Job, reason: str, code: str = "taskCancelled") -> None:
        """Called with the lock held: nothing of a cancelled job stays on disk."""
        self.out.remove(job)
        job.results.clear()
        job.request, job.finished = None, time.time()
        job.state = "cancelled"
        job.error = entry(code, f"the render was {reason}; nothing was written" if code == "taskCancelled"
                          else f"the render was {reason}", None, job.task_uuid)
        job.publish("cancelled", error=job.error)

    def _finish_error(self, job: Job, exc: BaseException) -> None:
        self.out.remove(job)  # a failed task keeps none of its results
        job.results.clear()
        job.error = error_of(exc, task_uuid=job.task_uuid)
        job.request, job.finished = None, time.time()
        job.state = "error"
        job.publish("error", error=job.error)
        self._hook(job, None, job.error)

    def _admit(self, job: Job) -> None:
        """Refuse `job` while draining, for a taskUUID already known, or with a full queue (hold the lock)."""
        if not self.accepting:
            raise ServerError(UNAVAILABLE, "the server is shutting down and takes no new work; retry in a "
                              "few seconds (after it restarts) or on another instance", task_uuid=job.task_uuid)
        self._forget_old()
        if job.task_uuid in self.jobs:
            raise conflict(job.task_uuid)
        if len(self._queue) >= self.queue_size:
            raise ServerError(QUEUE_FULL, f"the render queue is full ({self.queue_size} waiting); retry in a "
                              "few seconds", task_uuid=job.task_uuid)

    def _forget_old(self) -> None:
        """Called with the lock held: bound what finished jobs keep, by count, age and inline bytes."""
        now = time.time()
        finished = [k for k, j in self.jobs.items() if j.state in TERMINAL]
        for key in finished:
            if now - (self.jobs[key].finished or now) > KEEP_SECONDS:
                del self.jobs[key]
        finished = [k for k in finished if k in self.jobs]
        for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[key]
        finished = finished[max(0, len(finished) - KEEP_FINISHED):]
        inline = sum(_inline_bytes(self.jobs[k]) for k in finished)
        for key in finished:
            if inline <= KEEP_INLINE_BYTES:
                break
            inline -= _inline_bytes(self.jobs.pop(key))


def conflict(task_uuid: str) -> ServerError:
    return ServerError("conflictTaskUUID", f"taskUUID: {task_uuid} was already sent to this server (queued, "
                       "rendering or finished); poll it with getResponse, or send a new UUID", "taskUUID", task_uuid)


def _inline_bytes(job: Job) -> int:
    return sum(len(r.get(f, "")) for r in job.results for f in INLINE_FIELDS)
