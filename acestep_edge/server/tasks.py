"""One task of a request, for HTTP and WebSocket alike: platform options, validation, conflicts, getResponse."""

from __future__ import annotations

from dataclasses import dataclass, field

from acestep_edge.runtime.request import parse_request
from acestep_edge.runtime.vocab import TASK_TYPE
from acestep_edge.runtime.wire import RequestError, check_unique

from .guard import PathGuard
from .jobs import TERMINAL, Delivery, Job, Renderer, conflict
from .loras import check_request
from .wire import entry, error_of

# Runware platform options with no meaning on one local machine: refused, so no client relies on them.
REFUSED = {
    "routing": "routing picks among Runware's hosted providers; this local server renders every task itself",
    "advancedFeatures": "advancedFeatures are hosted-platform extras; this local server has none",
}


@dataclass
class Reply:
    """What one task answers: result items and errors now, or a sync job to wait for."""

    data: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    job: Job | None = None


def _uuid_of(task) -> str | None:
    raw = task.get("taskUUID") if isinstance(task, dict) else None
    return raw if isinstance(raw, str) else None


class Tasks:
    def __init__(self, renderer: Renderer, guard: PathGuard, hooks=None):
        self.renderer, self.guard, self.hooks = renderer, guard, hooks

    def handle(self, task, base_url: str, seen: set, owner: object = None) -> Reply:
        kind = task.get("taskType") if isinstance(task, dict) else None
        if kind == "getResponse":
            return self.get_response(task, owner)
        if kind == "ping":
            return Reply(data=[{"taskType": "ping", "pong": True}])
        try:
            return self._submit(task, base_url, seen, owner)
        except RequestError as exc:  # ServerError too
            return Reply(errors=[error_of(exc, _uuid_of(task))])

    def _submit(self, task, base_url: str, seen: set, owner: object) -> Reply:
        delivery = Delivery()
        if isinstance(task, dict):
            task = dict(task)
            delivery = self._delivery(task, _uuid_of(task))
            self.guard.check_task(task)
        request = parse_request(task)
        check_request(self.renderer.pipeline, request)  # adapters read and checked before queueing: 400
        check_unique(request.task_uuid, seen)
        held = self.renderer.get(request.task_uuid)
        if held is not None:
            self._claim(held, owner)
            raise conflict(request.task_uuid)
        job = Job(request, base_url, delivery, owner)
        self.renderer.submit(job)
        if job.sync:
            return Reply(job=job)
        return Reply(data=[{"taskType": TASK_TYPE, "taskUUID": job.task_uuid, "status": "processing"}])

    def precheck(self, task) -> None:
        """The server's own checks of a raw task (platform options, paths), taking its options out of it."""
        if isinstance(task, dict):
            self._delivery(task, _uuid_of(task))
            self.guard.check_task(task)

    def _delivery(self, task: dict, task_uuid: str | None) -> Delivery:
        """Take the platform options out of the raw task (the runtime's parser knows none of them)."""
        for name, why in REFUSED.items():
            if name in task:
                raise RequestError(name, f"{name}: not supported: {why}; remove it", "unsupportedParameter",
                                   task_uuid)
        mode = task.pop("deliveryMethod", "sync")
        if mode not in ("sync", "async"):
            raise RequestError("deliveryMethod", f"deliveryMethod: {str(mode)[:40]!r} is not supported; use 'sync' "
                               "(wait for the result) or 'async' (poll with getResponse)", "invalidEnum", task_uuid)
        cost = task.pop("includeCost", False)
        if not isinstance(cost, bool):
            raise RequestError("includeCost", "includeCost: send true or false", "invalidType", task_uuid)
        delivery = Delivery(mode, cost)
        for name in ("webhookURL", "uploadEndpoint"):
            if name in task:
                url = task.pop(name)
                if self.hooks is None:
                    raise RequestError(name, f"{name}: this server sends nothing out", "unsupportedParameter",
                                       task_uuid)
                url = self.hooks.check(url, name, task_uuid)
                if name == "webhookURL":
                    delivery.webhook = url
                else:
                    delivery.upload = url
        return delivery

    @staticmethod
    def _claim(job: Job, owner: object) -> None:
        """A client that reconnected asks for its task again: it waits for it now, so it is not cancelled."""
        if owner is not None and job.owner is not None and job.state not in TERMINAL:
            job.owner = owner

    def get_response(self, task: dict, owner: object = None) -> Reply:
        raw = _uuid_of(task)
        unknown = sorted(set(task) - {"taskType", "taskUUID"})
        if unknown:
            return Reply(errors=[entry("unknownParameter", f"{unknown[0]}: unknown parameter; getResponse takes "
                                       "taskType and taskUUID", unknown[0], raw, "getResponse")])
        job = self.renderer.get(raw.lower()) if raw else None
        if job is None:
            return Reply(errors=[entry("taskNotFound", f"taskUUID: no task {str(raw)[:40]!r} on this server (it "
                                       "was never sent, or it finished long ago)", "taskUUID", raw, "getResponse")])
        self._claim(job, owner)
        return Reply(data=status_items(job)) if job.state not in ("error", "cancelled") else \
            Reply(errors=[{**job.error, "status": job.state}])


def status_items(job: Job) -> list[dict]:
    """getResponse's answer for a job that has not failed: its results so far, then a processing item."""
    done = [{**r, "status": "success"} for r in job.results]
    if job.state == "success":
        return done
    return done + [{"taskType": TASK_TYPE, "taskUUID": job.task_uuid, "status": "processing",
                    "queueState": job.state, "progress": job.progress()}]
