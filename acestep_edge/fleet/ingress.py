"""The ingress deployment: the server's own Starlette app over a FleetRenderer that dispatches to renderer replicas.

FleetRenderer keeps the server Renderer's interface (submit, get, cancel, drain, the Job events that
REST, SSE and WebSocket read), so routes.py, tasks.py and websocket.py serve the fleet unchanged.
Job state lives in the registry actor; each ingress replica mirrors the jobs its clients ask about.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import ray

from acestep_edge.runtime.pipeline import Pipeline
from acestep_edge.server.app import ServerOptions, create_app
from acestep_edge.server.jobs import TERMINAL, Delivery, Job, Renderer, conflict
from acestep_edge.server.outdir import AUDIO_NAME, OutDir
from acestep_edge.server.wire import UNAVAILABLE, ServerError, entry

from .registry_actor import registry
from .renderer import adapter_key, remove_files

log = logging.getLogger("acestep_edge.fleet")
ATTEMPTS = 2  # a task whose replica dies is retried once on another, then reported as an error
POLL_SECONDS = 0.2
ADOPT_EVERY = 25  # polls between checks for tasks of a dead ingress replica (~5 s)
CALL_SECONDS = 30.0


class FleetOut(OutDir):
    """The shared --out-dir seen from an ingress: serves files the registry says a render delivered."""

    def __init__(self, path: Path, jobs):
        self.path, self.jobs = Path(path), jobs
        self.path.mkdir(parents=True, exist_ok=True)
        self._served: dict[str, None] = {}
        self._lock = threading.Lock()
        self._lock_fd = -1  # no folder lock: every replica of the fleet writes here

    def open_served(self, name: str):
        if AUDIO_NAME.fullmatch(name) and name not in self._served:
            if ray.get(self.jobs.served_task.remote(name), timeout=CALL_SECONDS) is None:
                return None
            with self._lock:
                self._served[name] = None
        return super().open_served(name)


class FleetRenderer(Renderer):
    """Renderer's interface; renders happen on the renderer deployment, state in the registry."""

    def __init__(self, pipeline, handle, out_dir: Path, queue_size: int = 16, registry_name: str = "",
                 hooks=None):
        self.pipeline, self.handle, self.queue_size, self.hooks = pipeline, handle, queue_size, hooks
        self.step_delay = 0.0
        self.registry = registry(registry_name)
        self.out = FleetOut(out_dir, self.registry)
        self.out_dir = self.out.path
        self.jobs = {}
        self.accepting = True
        self.renders = 0
        self._queue = []  # local jobs a replica has not started yet
        self._cond = threading.RLock()
        self._loop = None
        self._poller = None
        self._responses: dict[str, object] = {}
        try:  # this replica's actor name: the registry's owner of the tasks it takes
            self.name = ray.get_runtime_context().get_actor_name()
        except Exception:
            self.name = None

    # -- the Renderer interface ----------------------------------------------------------------
    @property
    def running(self):
        with self._cond:
            return next((j for j in self.jobs.values() if j.state == "running"), None)

    def _call(self, method: str, *args):
        return ray.get(getattr(self.registry, method).remote(*args), timeout=CALL_SECONDS)

    def submit(self, job: Job) -> None:
        self._start_poller()
        with self._cond:
            self._admit(job)
            spec = {"request": job.request, "base_url": job.base_url, "include_cost": job.delivery.include_cost}
            if not self._call("register", job.task_uuid, job.about, job.base_url, self.name, spec):
                raise conflict(job.task_uuid)  # sent to another ingress replica of this fleet
            self.jobs[job.task_uuid] = job
            self._queue.append(job)
            position = len(self._queue)
        job.publish("queued", position=position)
        asyncio.get_running_loop().create_task(self._dispatch(job))

    def get(self, task_uuid: str) -> Job | None:
        with self._cond:
            job = self.jobs.get(task_uuid)
        if job is not None:
            return job
        snap = self._call("snapshot", task_uuid)
        if snap is None:
            return None
        return self._mirror(task_uuid, snap)

    def cancel(self, task_uuid: str, reason: str = "cancelled by the client", code: str = "taskCancelled"):
        job = self.get(task_uuid)
        if job is None:
            raise ServerError("taskNotFound", f"no task {task_uuid} on this server", "taskUUID", task_uuid)
        if job.state in TERMINAL:
            return job.state
        message = f"the render was {reason}; nothing was written" if code == "taskCancelled" else \
            f"the render was {reason}"
        ended = self._call("cancel", task_uuid, message, code)
        if ended is not None:
            self._apply(job, self._call("snapshot", task_uuid) or {})
            return ended if ended != "missing" else "error"
        job.cancel_reason = reason
        job.cancel_event.set()
        with self._cond:
            if job.state == "queued":
                if job in self._queue:
                    self._queue.remove(job)
                response = self._responses.pop(task_uuid, None)
                if response is not None:
                    response.cancel()  # out of Serve's queue too
                self._finish_cancelled(job, reason, code)
        return None  # a running job stops at its replica's next step, and the poller reports it

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def idle(self) -> bool:
        with self._cond:
            return all(j.state in TERMINAL for j in self.jobs.values())

    def begin_drain(self, drain_seconds: float) -> None:
        with self._cond:
            if not self.accepting:
                return
            self.accepting = False
            waiting = list(self._queue)
            running = [j for j in self.jobs.values() if j.state == "running"]
        for job in waiting:
            self.cancel(job.task_uuid, "not started: the server is shutting down; retry in a few seconds or "
                        "on another instance", UNAVAILABLE)
        for job in running:
            timer = threading.Timer(drain_seconds, self._cancel_if_running, (job,))
            timer.daemon = True
            timer.start()

    def close(self, margin: float = 30.0) -> None:
        self.begin_drain(0.0)
        if self._poller is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._poller.cancel)

    # -- dispatch and state ----------------------------------------------------------------------
    def _start_poller(self) -> None:
        if self._poller is None:
            self._loop = asyncio.get_running_loop()
            self._poller = self._loop.create_task(self._poll())

    async def _dispatch(self, job: Job, first: int = 1) -> None:
        request = job.request
        spec = {"taskUUID": job.task_uuid, "request": request, "base_url": job.base_url,
                "include_cost": job.delivery.include_cost}
        handle = self.handle.options(multiplexed_model_id=adapter_key(request))
        for attempt in range(first, ATTEMPTS + 1):
            spec["attempt"] = attempt
            response = handle.render.remote(spec)
            self._responses[job.task_uuid] = response
            try:
                await response
                break
            except Exception as exc:  # the replica died (or Serve could not reach one)
                if job.state in TERMINAL:
                    break  # cancelled while queued: nothing more to do
                log.warning("attempt %d of %s failed on its replica: %s", attempt, job.task_uuid, exc)
                retry, files = await self.registry.retry.remote(job.task_uuid, attempt)
                await asyncio.to_thread(remove_files, self.out_dir, files)
                if retry and attempt < ATTEMPTS:
                    continue
                error = entry(UNAVAILABLE, f"the renderer replica failed {attempt} time(s) during this render; "
                              "nothing was written; retry the task", None, job.task_uuid)
                files = await self.registry.fail.remote(job.task_uuid, attempt + (1 if retry else 0), error)
                await asyncio.to_thread(remove_files, self.out_dir, files)
                break
            finally:
                self._responses.pop(job.task_uuid, None)
        snap = await self.registry.snapshot.remote(job.task_uuid)
        self._apply(job, snap or {})

    async def _poll(self) -> None:
        polls = 0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            polls += 1
            if self.name and self.handle is not None and polls % ADOPT_EVERY == 1:
                try:
                    await self._adopt_orphans()
                except Exception:
                    log.exception("could not look for tasks of a stopped ingress replica")
            with self._cond:
                live = [j for j in self.jobs.values() if j.state not in TERMINAL]
            try:
                drain, snaps = await self.registry.poll.remote([j.task_uuid for j in live])
            except Exception:
                log.exception("the job registry did not answer")
                continue
            if drain is not None and self.accepting:  # `acestep-edge fleet` got SIGTERM: every ingress drains
                await asyncio.to_thread(self.begin_drain, drain)
            for job in live:
                if job.task_uuid in snaps:
                    self._apply(job, snaps[job.task_uuid])

    async def _adopt_orphans(self) -> None:
        """Tasks whose ingress replica died (its Serve queue died with it) are sent again from here."""
        for owner in await self.registry.owners.remote():
            if owner == self.name or await asyncio.to_thread(_alive, owner):
                continue
            taken = await self.registry.adopt.remote(owner, self.name)
            log.warning("ingress %s is gone: taking its %d unfinished task(s)", owner, len(taken))
            for item in taken:
                spec = item["spec"]
                job = Job(spec["request"], spec["base_url"], Delivery("async", spec["include_cost"]))
                job.created = item["created"]
                with self._cond:
                    job = self.jobs.setdefault(item["taskUUID"], job)
                    job.request, job.base_url = spec["request"], spec["base_url"]
                    if item["state"] == "queued" and job.state == "queued":
                        if job not in self._queue:
                            self._queue.append(job)
                        asyncio.get_running_loop().create_task(self._dispatch(job, item["attempt"]))
                    elif item["state"] == "running":
                        job.state = "running"  # its replica still renders it and reports to the registry

    def _apply(self, job: Job, snap: dict) -> None:
        """Bring a local job up to the registry's record, publishing the events it missed."""
        state = snap.get("state")
        if state is None or job.state in TERMINAL:
            return
        if state != "queued" and job.state == "queued":
            with self._cond:
                if job in self._queue:
                    self._queue.remove(job)
                job.state = "running"
                self.renders += 1
            job.publish("started")
        progress = snap.get("progress")
        if progress and progress != getattr(job, "last_progress", None) and state == "running":
            job.publish("progress", **progress)
        if state not in TERMINAL:
            return
        job.finished = time.time()
        if state == "success":
            total = len(snap["results"])
            for index, data in enumerate(snap["results"]):
                job.results.append(data)
                job.publish("result", result=index, results=total, data=data)
                if job.request is not None:
                    self._hook(job, data)
            job.request, job.state = None, "success"
            job.publish("done", data=job.results)
            return
        job.error = snap["error"]
        if job.request is not None and state == "error":
            self._hook(job, None, job.error)
        job.request, job.state = None, state
        job.publish("cancelled" if state == "cancelled" else "error", error=job.error)

    def _mirror(self, task_uuid: str, snap: dict) -> Job:
        """A job another ingress replica took: tracked here for getResponse, events and cancel."""
        about = snap.get("about") or {}
        stub = SimpleNamespace(task_uuid=task_uuid, positive_prompt=about.get("positivePrompt", ""),
                               duration=about.get("duration"), steps=about.get("steps"), seed=about.get("seed"))
        job = Job(stub, snap.get("base_url", ""))
        job.request, job.created = None, snap.get("created", job.created)
        job.state = "queued"
        with self._cond:
            job = self.jobs.setdefault(task_uuid, job)
        try:
            self._start_poller()
        except RuntimeError:  # called off the event loop: the snapshot below is all it gets now
            pass
        self._apply(job, snap)
        return job


class Ingress:
    """The Serve ingress: builds the server's ASGI app (create_app) on a FleetRenderer at replica start."""

    def __init__(self, renderer_handle, bundle: str, out_dir: str, registry_name: str, queue: int = 16,
                 options: dict | None = None, fleet_info: dict | None = None):
        # No sessions here: the ingress validates requests (and adapters) against the bundle's manifest only.
        pipeline = Pipeline.load(bundle, threads=1)
        base_info = pipeline.info
        pipeline.info = lambda: {**base_info(), "fleet": fleet_info or {}}
        self.fleet = FleetRenderer(pipeline, renderer_handle, Path(out_dir), queue, registry_name)
        options = dict(options or {})
        # A config file never holds the key: `serve deploy` / KubeRay give it in the replicas' environment.
        options.setdefault("api_key", os.environ.get("ACESTEP_EDGE_API_KEY") or None)
        for name in ("allow_dirs", "cors_origins", "webhook_allow"):
            options[name] = tuple(options.get(name) or ())
        self.options = ServerOptions(**options)

    def __serve_build_asgi_app__(self):
        app, fleet = create_app(self.fleet, self.options), self.fleet
        info = app.app.state.server.info  # what GET /health shows

        async def started(scope, receive, send):
            if fleet._poller is None:  # the replica's first ASGI event (lifespan start-up)
                fleet._start_poller()  # it also adopts tasks of a dead ingress replica
                asyncio.get_running_loop().create_task(_renderer_info(fleet.handle, info))
            return await app(scope, receive, send)

        return started


def _alive(actor_name: str) -> bool:
    """Whether the named Serve replica actor still exists."""
    try:
        ray.get_actor(actor_name, namespace="serve")
    except ValueError:
        return False
    return True


async def _renderer_info(handle, info: dict) -> None:
    """Show a renderer's sessions in /health: the providers and precisions the renders really use."""
    try:
        found = await handle.info.remote()
    except Exception:  # no renderer yet (or none left): /health keeps the bundle facts
        log.warning("could not ask a renderer replica for its providers", exc_info=True)
        return
    info["providers"], info["precisions"] = found["providers"], found["precisions"]
