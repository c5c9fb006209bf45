"""Runware-shaped responses: one result per rendered audio, and the `errors` envelope."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from acestep_edge.runtime.audio_io import EXTENSIONS, MIME_TYPES
from acestep_edge.runtime.request import Request
from acestep_edge.runtime.vocab import TASK_TYPE
from acestep_edge.runtime.wire import error_entry


def new_audio_uuid() -> str:
    return str(uuid.uuid4())


def output_filename(request: Request, audio_uuid: str) -> str:
    """Runware names results `<audioUUID>.<ext>`; we do the same in the output directory."""
    return f"{audio_uuid}.{EXTENSIONS[request.output_format]}"


def build_response(
    request: Request,
    *,
    seed: int,
    path: str | os.PathLike | None = None,
    audio_bytes: bytes | None = None,
    audio_uuid: str | None = None,
    timings: Mapping[str, float] | None = None,
    warnings: Iterable[str] = (),
) -> dict[str, Any]:
    """The result object for one audio, shaped by request.output_type.

    URL needs `path` (the written file; reported as a file:// URI); base64Data and dataURI need
    `audio_bytes` (the encoded file). `warnings` are appended to the request's parse warnings.
    """
    result: dict[str, Any] = {
        "taskType": TASK_TYPE,
        "taskUUID": request.task_uuid,
        "audioUUID": audio_uuid or new_audio_uuid(),
    }
    kind = request.output_type
    if kind == "URL":
        if path is None:
            raise ValueError("outputType URL needs the written file's path")
        result["audioURL"] = Path(path).resolve().as_uri()
    else:
        if audio_bytes is None:
            raise ValueError(f"outputType {kind} needs the encoded audio bytes")
        encoded = base64.b64encode(audio_bytes).decode("ascii")
        if kind == "base64Data":
            result["audioBase64Data"] = encoded
        else:
            result["audioDataURI"] = f"data:{MIME_TYPES[request.output_format]};base64,{encoded}"
    result["seed"] = int(seed)
    result["timings"] = {str(k): round(float(v), 4) for k, v in (timings or {}).items()}
    result["warnings"] = list(dict.fromkeys([*request.warnings, *warnings]))
    return result


def error_response(errors: BaseException | Iterable[BaseException], *,
                   task_uuid: str | None = None, task_type: str | None = TASK_TYPE) -> dict:
    """Runware's error envelope: {"errors": [{code, message, parameter, taskType, taskUUID}]}."""
    if isinstance(errors, BaseException):
        errors = [errors]
    return {"errors": [error_entry(e, task_uuid, task_type) for e in errors]}
