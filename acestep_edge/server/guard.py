"""Refuse source-audio fields that would make the server read host files outside --allow-dir.

Runs on the raw task object before parsing, so no path the client names is ever opened unless it
resolves (symlinks and `..` included) inside an allowed folder.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from acestep_edge.runtime.wire import RequestError, is_remote, remote_message

# The request fields that name source audio (inputs.audio, settings.referenceAudio).
AUDIO_FIELDS = (("inputs", "audio"), ("settings", "referenceAudio"))
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class PathGuard:
    def __init__(self, allow_dirs: Sequence[str | os.PathLike] = ()):
        self.allow_dirs = tuple(Path(os.path.realpath(d)) for d in allow_dirs)

    def check_task(self, task: object) -> None:
        """Check (and rewrite to their resolved form) the audio fields of one raw task object."""
        if not isinstance(task, MutableMapping):
            return
        for section, key in AUDIO_FIELDS:
            block = task.get(section)
            if isinstance(block, MutableMapping) and isinstance(block.get(key), str):
                block[key] = self.check(block[key], f"{section}.{key}", task)

    def check(self, value: str, param: str, task: Mapping) -> str:
        """The value to pass on: a data URI unchanged, a local path resolved under an allow-dir."""
        if value.startswith("data:"):
            return value
        match = _SCHEME.match(value)
        scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else None  # C: is a drive
        if is_remote(value):
            raise self._error(param, remote_message(param), "invalidFormat", task)
        if scheme not in (None, "file"):
            raise self._error(param, f"{param}: {scheme}: URIs are not supported; send a data URI, or a "
                              "path / file:// URI under one of the server's --allow-dir folders",
                              "invalidFormat", task)
        path = self._file_uri_path(value, param, task) if scheme == "file" else value
        if "\x00" in path:
            raise self._error(param, f"{param}: the path contains a NUL byte", "invalidFormat", task)
        if not self.allow_dirs:
            raise self._error(param, f"{param}: this server reads no local files (it was started without "
                              "--allow-dir); send the audio inline as a data URI", "invalidPath", task)
        if not os.path.isabs(path):
            raise self._error(param, f"{param}: {path!r} is relative; send an absolute path (or file:// URI) "
                              f"under {self._dirs()}, or send a data URI", "invalidPath", task)
        # realpath resolves `..` and symlinks without opening the file.
        resolved = Path(os.path.realpath(path))
        try:
            os.stat(resolved)
        except OSError as exc:
            if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES):  # missing files are the runtime's
                raise self._error(param, f"{param}: cannot open {path[:80]!r}: {exc.strerror}", "invalidPath",
                                  task) from None
        if not any(resolved == d or d in resolved.parents for d in self.allow_dirs):
            raise self._error(param, f"{param}: {path!r} is outside the folders this server may read "
                              f"({self._dirs()}); move the file there or send a data URI",
                              "invalidPath", task)
        return str(resolved)

    def _file_uri_path(self, value: str, param: str, task: Mapping) -> str:
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise self._error(param, f"{param}: only local file URIs (file:///absolute/path) are accepted, "
                              f"got {value[:80]!r}; or send a data URI", "invalidFormat", task)
        return unquote(parts.path)

    def _dirs(self) -> str:
        return ", ".join(str(d) for d in self.allow_dirs) or "none"

    @staticmethod
    def _error(param: str, message: str, code: str, task: Mapping) -> RequestError:
        uuid = task.get("taskUUID")
        return RequestError(param, message, code, uuid if isinstance(uuid, str) else None)
