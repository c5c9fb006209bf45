"""The render queue: one Pipeline, one worker thread, a bounded FIFO of jobs with events and cancel."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from pathlib import Path

from acestep_edge.runtime.delivery import deliver
from acestep_edge.runtime.pipeline import Cancelled, Pipeline
from acestep_edge.runtime.request import Request, RequestError
from acestep_edge.runtime.response import new_audio_uuid, output_filename
from acestep_edge.runtime.wire import error_entry, error_object

log = logging.getLogger("acestep_edge.server")

TERMINAL = ("success", "error", "cancelled")
KEEP_FINISHED = 64  # finished jobs kept for getResponse and the studio's recent renders
KEEP_INLINE_BYTES = 512 * 2**20  # and at most this much base64 audio among them (oldest go first)
INLINE_FIELDS = ("audioBase64Data", "audioDataURI")


class ServerError(Exception):
    """A task refused or failed by the server itself; `code` picks the HTTP status."""

    def __init__(self, code: str, message: str, parameter: str | None = None, task_uuid: str | None = None):
        super().__init__(message)
        self.code, self.message, self.parameter, self.task_uuid = code, message, parameter, task_uuid


class Job:
    """One audioInference task: its state, delivered results, and an event log that SSE replays."""

    def __init__(self, request: Request, base_url: str, delivery: str = "sync"):
        self.request, self.base_url, self.delivery = request, base_url, delivery
        self.task_uuid = request.task_uuid
        self.state = "queued"
        self.results: list[dict] = []
        self.error: dict | None = None
        self.files: list[Path] = []
        self.created = time.time()
        self.cancel_event = threading.Event()
        self.cancel_reason = "cancelled by the client"
        self.events: list[tuple[str, dict]] = []
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._lock = threading.Lock()

    # -- events (published from any thread, consumed on event loops) ---------------------------
    def publish(self, name: str, **data) -> None:
        event = (name, {"taskUUID": self.task_uuid, "status": self.state, **data})
        with self._lock:
            self.events.append(event)
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

    def summary(self) -> dict:
        """What the studio's recent-renders list shows."""
        r = self.request
        return {"taskUUID": self.task_uuid, "status": self.state, "positivePrompt": r.positive_prompt[:200],
                "duration": r.duration, "steps": r.steps, "seed": r.seed, "created": self.created,
                "results": [{k: v for k, v in x.items() if k in ("audioUUID", "audioURL", "seed")}
                            for x in self.results],
                "error": self.error}


class Renderer:
    """Owns the Pipeline; renders queued jobs one at a time, in order, on a worker thread."""

    def __init__(self, pipeline: Pipeline, out_dir: Path, queue_size: int = 16):
        self.pipeline, self.out_dir, self.queue_size = pipeline, Path(out_dir), queue_size
        for name in pipeline.bundle.manifest.get("graphs", {}):  # every session now, not on the first request
            pipeline.bundle.session(name)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(".*.part"):  # temp files of a process killed mid-write long ago
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink(missing_ok=True)
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.running: Job | None = None
        self.accepting = True
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
            if not self.accepting:
                raise ServerError("shuttingDown", "the server is shutting down and takes no new work; retry "
                                  "on another instance or after it restarts", task_uuid=job.task_uuid)
            old = self.jobs.get(job.task_uuid)
            if old is not None and old.state not in TERMINAL:
                raise RequestError("taskUUID", f"taskUUID: {job.task_uuid} is already queued or rendering on "
                                   "this server; every task needs its own UUID", "duplicateTaskUUID",
                                   job.task_uuid)
            if len(self._queue) >= self.queue_size:
                raise ServerError("queueFull", f"the render queue is full ({self.queue_size} waiting); retry "
                                  "later", task_uuid=job.task_uuid)
            self.jobs.pop(job.task_uuid, None)
            self.jobs[job.task_uuid] = job
            self._queue.append(job)
            position = len(self._queue)
            self._forget_old()
            self._cond.notify()
        job.publish("queued", position=position)

    def get(self, task_uuid: str) -> Job | None:
        with self._cond:
            return self.jobs.get(task_uuid)

    def cancel(self, task_uuid: str, reason: str = "cancelled by the client") -> str | None:
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
                self._finish_cancelled(job, reason)
            return None  # a running job stops at its next step and then reports cancelled

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def recent(self) -> list[dict]:
        with self._cond:
            return [job.summary() for job in reversed(self.jobs.values())]

    # -- shutdown ------------------------------------------------------------------------------
    def begin_drain(self, drain_seconds: float) -> None:
        """Stop taking work, cancel what waits, give the running render `drain_seconds` to finish."""
        with self._cond:
            if not self.accepting:
                return
            self.accepting = False
            self._drain_deadline = time.monotonic() + drain_seconds
            waiting = list(self._queue)
        for job in waiting:
            self.cancel(job.task_uuid, "the server is shutting down")
        running = self.running
        if running is not None:
            log.info("draining: %s may finish for %.0f s", running.task_uuid, drain_seconds)
            timer = threading.Timer(drain_seconds, self._cancel_if_running, (running,))
            timer.daemon = True
            timer.start()

    def _cancel_if_running(self, job: Job) -> None:
        if job.state not in TERMINAL:
            log.info("drain time is up: cancelling %s", job.task_uuid)
            self.cancel(job.task_uuid, "the server is shutting down (drain time is up)")

    def close(self, margin: float = 30.0) -> None:
        """Drain (now, unless a drain already began) and stop the worker; waits for the drain's end."""
        self.begin_drain(0.0)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(max(0.0, self._drain_deadline - time.monotonic()) + margin)

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
            job.publish("started")
            try:
                self._render(job)
            finally:
                with self._cond:
                    self.running = None

    def _render(self, job: Job) -> None:
        request = job.request
        total = request.number_results
        count = {"result": 0, "step": 0}

        def progress(step: int, steps: int) -> None:
            if step <= count["step"]:  # the step count restarted: the next result is rendering
                count["result"] += 1
            count["step"] = step
            index = count["result"]
            job.publish("progress", step=step, steps=steps, result=index, results=total,
                        progress=round((index + step / steps) / total, 4))

        try:
            # The CLI's own call: the same seeds (seed, seed+1, ...), conditioning and audio.
            results = self.pipeline.generate_all(request, progress=progress, cancel=job.cancel_event)
            if job.cancel_event.is_set():
                raise Cancelled("cancelled")
            for index, result in enumerate(results):
                data = self._deliver(job, request, result)
                job.results.append(data)
                job.publish("result", result=index, results=total, data=data)
        except Cancelled:
            with self._cond:
                self._finish_cancelled(job, job.cancel_reason)
            return
        except RequestError as exc:
            self._finish_error(job, exc)
            return
        except Exception as exc:  # reported by type and message; the traceback goes to the log only
            log.exception("render of %s failed", job.task_uuid)
            self._finish_error(job, exc)
            return
        with self._cond:
            if job.cancel_event.is_set():  # a DELETE won the race with the last write
                self._finish_cancelled(job, job.cancel_reason)
                return
            job.state = "success"
        job.publish("done", data=job.results)

    def _deliver(self, job: Job, request: Request, result) -> dict:
        audio_uuid = new_audio_uuid()
        name = output_filename(request, audio_uuid)
        path = self.out_dir / name if request.output_type == "URL" else None
        data = deliver(request, result, path, audio_uuid=audio_uuid)
        if path is not None:
            job.files.append(path)
            data["audioURL"] = f"{job.base_url}audio/{name}"
        return data

    def _finish_cancelled(self, job: Job, reason: str) -> None:
        """Called with the lock held: nothing of a cancelled job stays on disk."""
        for path in job.files:
            path.unlink(missing_ok=True)
        job.files.clear()
        job.results.clear()
        job.state = "cancelled"
        job.error = error_object("taskCancelled", f"the render was {reason}; nothing was written", None,
                                 job.task_uuid, job.request.task_type)
        job.publish("cancelled", error=job.error)

    def _finish_error(self, job: Job, exc: BaseException) -> None:
        for path in job.files:  # a failed task keeps none of its results
            path.unlink(missing_ok=True)
        job.files.clear()
        job.results.clear()
        job.error = error_entry(exc, job.task_uuid)
        job.state = "error"
        job.publish("error", error=job.error)

    def _forget_old(self) -> None:
        """Called with the lock held: bound what finished jobs keep in memory, by count and inline bytes."""
        finished = [k for k, j in self.jobs.items() if j.state in TERMINAL]
        for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[key]
        finished = finished[max(0, len(finished) - KEEP_FINISHED):]
        inline = sum(_inline_bytes(self.jobs[k]) for k in finished)
        for key in finished:
            if inline <= KEEP_INLINE_BYTES:
                break
            inline -= _inline_bytes(self.jobs.pop(key))


def _inline_bytes(job: Job) -> int:
    return sum(len(r.get(f, "")) for r in job.results for f in INLINE_FIELDS)
