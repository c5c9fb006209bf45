"""The server's side of Runware's wire format: error codes and HTTP statuses, the envelope, safe JSON decoding."""

from __future__ import annotations

import json
from typing import Any

from acestep_edge.runtime.request import TASK_TYPE, RequestError

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
MAX_DEPTH = 32  # a Runware task nests 3 deep; a deeper body is refused before anything walks it
MAX_INT_DIGITS = 100  # no request field needs more; Python refuses over 4,300 with a ValueError


class ServerError(Exception):
    """A task refused or failed by the server itself; `code` picks the HTTP status."""

    def __init__(self, code: str, message: str, parameter: str | None = None, task_uuid: str | None = None,
                 task_type: str | None = TASK_TYPE):
        super().__init__(message)
        self.code, self.message, self.parameter = code, message, parameter
        self.task_uuid, self.task_type = task_uuid, task_type


def entry(code: str, message: str, parameter: str | None = None, task_uuid: str | None = None,
          task_type: str | None = TASK_TYPE) -> dict:
    """One entry of Runware's `errors` array."""
    return {"code": code, "message": message, "parameter": parameter, "taskType": task_type, "taskUUID": task_uuid}


def error_of(exc: BaseException, task_uuid: str | None = None, task_type: str | None = TASK_TYPE) -> dict:
    """The error object of a refusal or failure: a named field, or the type-free message of anything else."""
    if isinstance(exc, (RequestError, ServerError)):
        return entry(exc.code, exc.message, exc.parameter, exc.task_uuid or task_uuid,
                     exc.task_type or task_type)
    # Never a class name or a traceback: those go to the log only.
    return entry(INTERNAL, "the render failed inside the server: " + (_clean(str(exc)) or "no detail"),
                 None, task_uuid, task_type)


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


def _clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")[:300]


def _big_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError("request", f"request: a number with {len(text)} digits; no field takes more than "
                           f"{MAX_INT_DIGITS}", "invalidValue", None)
    return int(text)


def decode(raw: bytes | str) -> Any:
    """JSON text → Python value, refusing what would later crash a handler: invalid UTF-8, lone surrogates,
    nesting deeper than MAX_DEPTH, integers longer than MAX_INT_DIGITS (all as RequestError)."""
    try:
        value = json.loads(raw, parse_int=_big_int)
    except RecursionError:
        raise RequestError("request", f"request: JSON nested deeper than {MAX_DEPTH} levels", "invalidJSON",
                           None) from None
    except json.JSONDecodeError as exc:
        raise RequestError("request", f"request: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                           f"{exc.colno})", "invalidJSON", None) from None
    except UnicodeDecodeError as exc:
        raise RequestError("request", f"request: not UTF-8 text ({exc.reason} at byte {exc.start})",
                           "invalidJSON", None) from None
    check_tree(value)
    return value


def check_tree(value: Any) -> None:
    """Walk a decoded body without recursion: bounded depth, and every string (keys too) valid Unicode."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError("request", f"request: JSON nested deeper than {MAX_DEPTH} levels", "invalidJSON",
                               None)
        if isinstance(item, str):
            _check_text(item, path or "request")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, _join(path, key))
                stack.append((child, _join(path, key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _join(path: str, key: str) -> str:
    # Task objects sit at the top of the array: their fields are named as the parser names them.
    if path.endswith("]") and path.count("[") == 1 and path.startswith("["):
        return key
    return f"{path}.{key}" if path else key


def _check_text(text: str, param: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        name = param.encode("ascii", "replace").decode("ascii")
        raise RequestError(name, f"{name}: not valid Unicode (a lone UTF-16 surrogate); send UTF-8 text",
                           "invalidUnicode", None) from None
