"""Requests read from a file or stdin: relative source paths resolve against the file's folder (stdin: the current one)."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from pathlib import Path

from .request import RequestError

# The request fields that name a local file: (object path, key, parameter name in errors).
SOURCE_FIELDS = (("inputs", "audio", "inputs.audio"), ("settings", "referenceAudio", "settings.referenceAudio"))
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _local_path(value: str) -> Path | None:
    """The path a source string names, or None for data URIs and URLs (the parser judges those)."""
    if value.startswith("file:"):
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(value).path))
    if _SCHEME.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):  # a scheme, not a Windows drive
        return None
    return Path(value).expanduser()


def resolve_sources(data, base: Path, from_stdin: bool) -> None:
    """Make relative source paths absolute against `base`, in place; a missing file is refused, naming the folder.

    Runs on the raw request objects before parsing, so every later step sees one absolute path.
    """
    where = "the current folder (the request came on stdin)" if from_stdin else "the request file's folder"
    for item in data if isinstance(data, list) else [data]:
        if not isinstance(item, dict):
            continue
        for parent, key, param in SOURCE_FIELDS:
            holder = item.get(parent)
            value = holder.get(key) if isinstance(holder, dict) else None
            if not isinstance(value, str) or not value.strip():
                continue  # absent or the wrong type: the parser names it
            path = _local_path(value)
            if path is None:
                continue
            full = path if path.is_absolute() else (base / path)
            if not full.is_file():
                uuid = item.get("taskUUID") if isinstance(item.get("taskUUID"), str) else None
                found = "is not a file" if full.exists() else "does not exist"
                relative = "" if path.is_absolute() else f" in {base} ({where}; a relative path is read from there)"
                raise RequestError(param, f"{param}: {value!r} {found}{relative}", "invalidAudio", uuid)
            if not path.is_absolute():
                holder[key] = str(full)
