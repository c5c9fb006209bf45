"""The server's --out-dir: one server per folder, its own stale temp files swept, and only files it wrote served."""

from __future__ import annotations

import base64
import collections
import fcntl
import os
import re
import stat
import threading
from pathlib import Path

from acestep_edge.runtime.audio_io import MIME_TYPES
from acestep_edge.runtime.delivery import deliver
from acestep_edge.runtime.response import new_audio_uuid, output_filename

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
AUDIO_NAME = re.compile(_UUID + r"\.(mp3|wav|flac|ogg)")
# audio_io.write_bytes_atomic's temp names for our files: ".<audioUUID>.<ext>.<random>.part".
PART_NAME = re.compile(r"\." + _UUID + r"\.(mp3|wav|flac|ogg)\.[^/]*\.part")
MEDIA = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}
KEEP_NAMES = 100_000  # names of delivered files remembered for serving (oldest are forgotten first)


class OutDirBusy(RuntimeError):
    pass


class OutDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # One server per folder, so the sweep below cannot remove another live server's temp files.
        self._lock_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)  # flock on the folder: no lock file
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise OutDirBusy(f"{self.path} is used by another acestep-edge server; give each its own --out-dir") \
                from None
        for entry in os.scandir(self.path):  # temp files of a server killed mid-write
            if PART_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        self._served: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def deliver(self, job, request, result, index: int) -> dict:
        """Write or encode one result, and build its Runware result object."""
        audio_uuid = new_audio_uuid()
        name = output_filename(request, audio_uuid)
        path = self.path / name if request.output_type == "URL" else None
        data = deliver(request, result, path, audio_uuid=audio_uuid)
        if path is not None:
            job.files.append(path)
            with self._lock:
                self._served[name] = None
                while len(self._served) > KEEP_NAMES:
                    self._served.popitem(last=False)
            data["audioURL"] = f"{job.base_url}audio/{name}"
        if request.number_results > 1:
            data["resultIndex"] = index
        if job.delivery.include_cost:
            data["cost"] = 0  # a local render costs nothing
        return data

    def remove(self, job) -> None:
        for path in job.files:
            path.unlink(missing_ok=True)
            with self._lock:
                self._served.pop(path.name, None)
        job.files.clear()

    def audio_bytes(self, data: dict, output_format: str) -> tuple[bytes, str]:
        """The encoded audio of a result object and its media type (for uploadEndpoint)."""
        if "audioURL" in data:
            audio = (self.path / data["audioURL"].rsplit("/", 1)[1]).read_bytes()
        elif "audioDataURI" in data:
            audio = base64.b64decode(data["audioDataURI"].split(",", 1)[1])
        else:
            audio = base64.b64decode(data["audioBase64Data"])
        return audio, MIME_TYPES[output_format]

    def open_served(self, name: str) -> tuple[int, int] | None:
        """(fd, size) of a regular file this server delivered under `name`, never through a symlink."""
        if not AUDIO_NAME.fullmatch(name):
            return None
        with self._lock:
            if name not in self._served:
                return None
        try:
            fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        return fd, info.st_size
