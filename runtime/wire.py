"""Runware's wire boundary, once: the error object, the request body, remote-URL refusal, unique taskUUIDs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .vocab import TASK_TYPE

# Schemes of audio this offline runtime never fetches (the CLI, the parser and the server agree).
REMOTE_SCHEMES = ("http", "https", "ftp", "s3")
_REMOTE = re.compile(r"^(%s)://" % "|".join(REMOTE_SCHEMES), re.IGNORECASE)


class RequestError(ValueError):
    """A request field is missing or invalid; `message` says which value to send instead."""

    def __init__(self, parameter: str | None, message: str, code: str = "invalidParameter",
                 task_uuid: str | None = None, task_type: str | None = TASK_TYPE):
        super().__init__(message)
        self.parameter = parameter
        self.message = message
        self.code = code
        self.task_uuid = task_uuid
        self.task_type = task_type


def show(value: Any) -> str:
    """A short repr of a client's value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_object(code: str, message: str, parameter: str | None = None, task_uuid: str | None = None,
                 task_type: str | None = TASK_TYPE) -> dict:
    """One entry of Runware's `errors` array."""
    return {"code": code, "message": message, "parameter": parameter, "taskType": task_type, "taskUUID": task_uuid}


def error_entry(err: BaseException, task_uuid: str | None = None, task_type: str | None = TASK_TYPE) -> dict:
    """The error object of an exception: a RequestError names its field; anything else is reported by
    type and message only (never a traceback)."""
    if isinstance(err, RequestError):
        return error_object(err.code, err.message, err.parameter, err.task_uuid or task_uuid,
                            err.task_type or task_type)
    return error_object(getattr(err, "code", None) or "internalError", str(err) or type(err).__name__,
                        getattr(err, "parameter", None), task_uuid, task_type)


def parse_body(body: Any) -> list:
    """A request body (bytes or text of JSON, or already decoded) → the list of its task objects.

    A bare task object is a list of one; anything but a non-empty array or an object is refused.
    """
    if isinstance(body, (str, bytes, bytearray)):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as exc:
            raise RequestError("request", f"request: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                               f"{exc.colno})", "invalidJSON") from exc
        except UnicodeDecodeError as exc:
            raise RequestError("request", f"request: not valid JSON (not UTF-8 text: {exc.reason} at byte "
                               f"{exc.start})", "invalidJSON") from exc
    items = [body] if isinstance(body, Mapping) else body
    if not isinstance(items, list) or not items:
        raise RequestError("request", "request: send an audioInference task object or a non-empty JSON array "
                           f"of task objects, got {show(body)}", "invalidType")
    return items


def check_unique(task_uuid: str, seen: set[str]) -> None:
    """Refuse a taskUUID already used in the same request body; remember it otherwise."""
    if task_uuid in seen:
        raise RequestError("taskUUID", f"taskUUID: {task_uuid} is used by more than one task in this request; "
                           "every task needs its own UUID", "duplicateTaskUUID", task_uuid)
    seen.add(task_uuid)


def is_remote(source: str) -> bool:
    return bool(_REMOTE.match(source))


def remote_message(param: str) -> str:
    return (f"{param}: remote URLs are not fetched by this offline runtime; send a local path, a file:// URI "
            "or a data URI (data:audio/<type>;base64,...)")


def refuse_remote(source: str, param: str, task_uuid: str | None = None) -> None:
    """Raise the one remote-URL refusal when `source` names audio this runtime would have to fetch."""
    if is_remote(source):
        raise RequestError(param, remote_message(param), "invalidFormat", task_uuid)
