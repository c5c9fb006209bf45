"""Runware's wire boundary, once: the error object, the request body, remote-URL refusal, unique taskUUIDs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .vocab import TASK_TYPE

# Schemes of audio this offline runtime never fetches (the CLI, the parser and the server agree).
REMOTE_SCHEMES = ("http", "https", "ftp", "s3")
MAX_DEPTH = 32  # a Runware task nests 3 deep; deeper bodies are refused before anything walks them
MAX_INT_DIGITS = 100  # no field needs more; Python itself refuses over 4,300 digits with a ValueError
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
    # Never an exception's class name (clients see messages, the log keeps types and tracebacks).
    return error_object(getattr(err, "code", None) or "internalServerError",
                        str(err).encode("utf-8", "replace").decode()[:300] or "the render failed",
                        getattr(err, "parameter", None), task_uuid, task_type)


def parse_body(body: Any) -> list:
    """A request body (bytes or text of JSON, or already decoded) → the list of its task objects.

    A bare task object is a list of one; anything but a non-empty array or an object is refused.
    """
    if isinstance(body, (str, bytes, bytearray)):
        try:
            body = json.loads(body, parse_int=_int)
        except RecursionError:
            raise RequestError("request", f"request: JSON nested deeper than {MAX_DEPTH} levels",
                               "invalidJSON") from None
        except json.JSONDecodeError as exc:
            raise RequestError("request", f"request: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                               f"{exc.colno})", "invalidJSON") from exc
        except UnicodeDecodeError as exc:
            raise RequestError("request", f"request: not valid JSON (not UTF-8 text: {exc.reason} at byte "
                               f"{exc.start})", "invalidJSON") from exc
    check_tree(body)
    items = [body] if isinstance(body, Mapping) else body
    if not isinstance(items, list) or not items:
        raise RequestError("request", "request: send an audioInference task object or a non-empty JSON array "
                           f"of task objects, got {show(body)}", "invalidType")
    return items


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError("request", f"request: a number with {len(text)} digits; no field takes more than "
                           f"{MAX_INT_DIGITS}", "invalidValue")
    return int(text)


def check_tree(value: Any) -> None:
    """Refuse what would crash a later step: nesting deeper than MAX_DEPTH (recursion), and strings (keys
    too) that are not valid Unicode (lone surrogates, which no UTF-8 encoder writes). No recursion here."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError("request", f"request: JSON nested deeper than {MAX_DEPTH} levels", "invalidJSON")
        if isinstance(item, str):
            _check_text(item, path or "request")
        elif isinstance(item, Mapping):
            for key, child in item.items():
                name = key if path.startswith("[") and path.endswith("]") and path.count("[") == 1 else \
                    f"{path}.{key}".lstrip(".")  # fields of a top-level task are named as the parser names them
                _check_text(str(key), name)
                stack.append((child, name, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, param: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        name = param.encode("ascii", "replace").decode("ascii")
        raise RequestError(name, f"{name}: not valid Unicode (a lone UTF-16 surrogate); send UTF-8 text",
                           "invalidUnicode") from None


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
