"""Build the uvicorn server around one Pipeline, with a SIGTERM drain that stops taking work first."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from acestep_edge.runtime.pipeline import Pipeline

from .app import ServerOptions, create_app
from .jobs import Renderer


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT stop taking work first, so open requests end within --drain-seconds."""

    def __init__(self, config: uvicorn.Config, renderer: Renderer, drain_seconds: float):
        super().__init__(config)
        self.renderer, self.drain_seconds = renderer, drain_seconds

    def handle_exit(self, sig, frame) -> None:
        self.renderer.begin_drain(self.drain_seconds)
        super().handle_exit(sig, frame)


def build_server(bundle: Path, *, host: str = "127.0.0.1", port: int = 8000, provider: str = "cpu",
                 threads: int | None = None, queue: int = 16, out_dir: Path = Path("acestep-edge-renders"),
                 api_key: str | None = None, allow_dirs=(), max_body_mb: float = 64, drain_seconds: float = 30,
                 log_level: str = "info", lora_dir: Path | None = None):
    """A ready uvicorn.Server (sessions created, worker started); call .run() to serve."""
    pipeline = Pipeline.load(bundle, provider=provider, threads=threads)
    manifest = pipeline.bundle.manifest
    info = {"name": Path(bundle).resolve().name, "format": manifest.get("format"),
            "format_version": manifest.get("format_version")}
    renderer = Renderer(pipeline, out_dir, queue)
    options = ServerOptions(api_key=api_key, allow_dirs=tuple(str(d) for d in allow_dirs),
                            max_body_bytes=int(max_body_mb * 2**20), bundle_info=info,
                            lora_dir=str(lora_dir) if lora_dir else None)
    config = uvicorn.Config(create_app(renderer, options), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=int(drain_seconds) + 10, server_header=False)
    return DrainingServer(config, renderer, drain_seconds)
