"""Run Runware's own SDKs (each in its own folder: both install a package named `runware`) against a test server.

Install them once (CI does, in .ci/run):
    python -m pip install --no-deps --target .sdk/runware-0.5.24 runware==0.5.24
    python -m pip install --no-deps --target .sdk/runware-sdk-1.8.0 runware-sdk==1.8.0
Their dependencies (websockets, httpx, aiofiles, python-dotenv, aiohttp, fastjsonschema) come from the
`dev` extra. ACESTEP_EDGE_SDK_DIR overrides where the folders are looked for.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SDK_DIR = Path(os.environ.get("ACESTEP_EDGE_SDK_DIR", ROOT / ".sdk"))
SDKS = {"runware": "runware-0.5.24", "runware-sdk": "runware-sdk-1.8.0"}
CLIENT = Path(__file__).resolve().parent / "sdk_client.py"
MODEL = "runware:ace-step@v1.5-xl-base"


def sdk_path(sdk: str) -> Path:
    path = SDK_DIR / SDKS[sdk]
    if not (path / "runware" / "__init__.py").is_file():
        pytest.skip(f"{sdk} is not installed in {path}: python -m pip install --no-deps --target {path} "
                    f"{SDKS[sdk].rsplit('-', 1)[0]}=={SDKS[sdk].rsplit('-', 1)[1]}")
    return path


def run_sdk(sdk: str, transport: str, url: str, cases: list[dict], api_key: str = "any-key", timeout: float = 300,
            env: dict | None = None, **extra) -> dict[str, dict]:
    """{case name: outcome} from one SDK client process (one connection for all its cases)."""
    spec = {"sdk": sdk, "transport": transport, "url": url, "api_key": api_key, "cases": cases, **extra}
    environment = {**os.environ, "PYTHONPATH": str(sdk_path(sdk)), **(env or {})}
    proc = subprocess.run([sys.executable, str(CLIENT)], input=json.dumps(spec), capture_output=True, text=True,
                          timeout=timeout, env=environment)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {r["name"]: r for r in json.loads(lines[-1][8:])}


def audio_params(**overrides) -> dict:
    params = {"model": MODEL, "positivePrompt": "a short test", "duration": 10, "steps": 2, "seed": 3,
              "outputFormat": "MP3"}
    params.update(overrides)
    return params


class Proxy:
    """A TCP proxy to the server whose connections can all be cut at once (a network failure, no close frame)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self) -> int:
        """Cut every open connection; returns how many."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()  # linger 0: a reset, as when a network path dies
                except OSError:
                    pass
        return len(pairs)

    def close(self) -> None:
        self.listener.close()
        self.drop()
