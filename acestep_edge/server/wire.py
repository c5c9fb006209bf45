"""The server's side of Runware's wire format: its error codes, their HTTP statuses, the REST envelope."""

from __future__ import annotations

from acestep_edge.runtime.vocab import TASK_TYPE
from acestep_edge.runtime.wire import RequestError, error_entry, error_object

# Error codes this server adds to the runtime's, named so both Runware SDKs classify them (runware-sdk's
# errors.derive_code: "invalid*"/"unsupported*"/"conflict*"/"max*" are validation errors, "*NotFound"
# not found, "rateLimitExceeded" a retryable rate limit, "serviceUnavailable"/"internalServerError"
# retryable server errors, "*ApiKey" auth, "*Timeout" timeouts).
INTERNAL = "internalServerError"
UNAVAILABLE = "serviceUnavailable"
QUEUE_FULL = "rateLimitExceeded"
BODY_TOO_LARGE = "maxBodySizeExceeded"
CONFLICT = "conflictTaskUUID"
# HTTP status of a response that carries errors only; anything not listed is a validation error (400).
STATUS = {"missingApiKey": 401, "invalidApiKey": 401, "forbidden": 403, "endpointNotFound": 404, "fileNotFound": 404,
          "taskNotFound": 404, "unsupportedMethod": 405, "requestTimeout": 408, "taskCancelled": 409,
          "conflictTaskFinished": 409, CONFLICT: 409, BODY_TOO_LARGE: 413, "invalidRange": 416,
          QUEUE_FULL: 429, INTERNAL: 500, UNAVAILABLE: 503}
RETRY_AFTER_SECONDS = 5


class ServerError(RequestError):
    """A task refused or failed by the server itself (queue full, draining, conflict); `code` picks the status."""

    def __init__(self, code: str, message: str, parameter: str | None = None, task_uuid: str | None = None,
                 task_type: str | None = TASK_TYPE):
        super().__init__(parameter, message, code, task_uuid, task_type)


entry = error_object  # one Runware error-object builder (the runtime's)
error_of = error_entry


def status_of(errors: list[dict]) -> int:
    statuses = {STATUS.get(e.get("code"), 400) for e in errors}
    return statuses.pop() if len(statuses) == 1 else 400


def body_of(data: list[dict], errors: list[dict]) -> tuple[dict, int, dict]:
    """Runware's HTTP envelope, its status (from the errors when nothing succeeded) and extra headers."""
    body: dict = {}
    if data or not errors:
        body["data"] = data
    if errors:
        body["errors"] = errors
    status = 200 if data or not errors else status_of(errors)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else {}
    return body, status, headers
