"""`acestep-edge serve`: load the bundle once, then answer Runware requests over HTTP/WebSocket until SIGTERM."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

import click

from acestep_edge.runtime.bundle import PROVIDERS, BundleError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _missing_extra(exc: ImportError) -> None:
    click.echo(f"acestep-edge serve needs the [server] extra ({exc.name} is missing): "
               "pip install 'acestep-edge[server]'", err=True)
    sys.exit(1)


def _port_taken(host: str, port: int) -> str | None:
    """Why (host, port) cannot be bound, found before the bundle loads; None when it is free (or port 0)."""
    import socket

    if port == 0:
        return None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        return None  # an unresolvable host: uvicorn says so itself
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--bundle", type=click.Path(path_type=Path), envvar="ACESTEP_EDGE_BUNDLE", required=True,
              help="Bundle folder from `acestep-edge export` (or set ACESTEP_EDGE_BUNDLE).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Loopback by default; anything else lets other machines in (set --api-key).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any free).")
@click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True,
              help="ONNX Runtime execution provider; GET /health reports the providers actually used.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads per session (default: all cores).")
@click.option("--queue", "queue", type=click.IntRange(min=1), default=16, show_default=True,
              help="Renders that may wait behind the running one; more get HTTP 429.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("acestep-edge-renders"),
              show_default=True, help="Where outputType URL files are written; served at /audio/<audioUUID>.<ext>.")
@click.option("--api-key", envvar="ACESTEP_EDGE_API_KEY", default=None,
              help="Require this key (Authorization: Bearer KEY, or a Runware authentication task). "
                   "Prefer setting ACESTEP_EDGE_API_KEY: command lines are visible to other users.")
@click.option("--allow-dir", "allow_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder whose files inputs.audio / settings.referenceAudio may name (repeatable). "
                   "Without it the server reads no client-named file; data URIs always work.")
@click.option("--lora-dir", "lora_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of LoRA/LoKr adapters a request's `lora` entries may name (relative names only; no "
                   "`..`, no symlinks out). GET /v1/loras lists them. Without it requests with `lora` are refused.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=64, show_default=True,
              help="Largest request body accepted (HTTP 413 above).")
@click.option("--drain-seconds", type=click.FloatRange(min=0), default=30, show_default=True,
              help="On SIGTERM: how long the running render may finish before it is cancelled.")
@click.option("--public-url", default=None,
              help="The URL clients reach this server at (behind a proxy, or bound to 0.0.0.0): the base of "
                   "audioURL, and a Host name it answers to.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="A web page origin (https://app.example) that may call this server from a browser "
                   "(repeatable; '*' for any). Default: the studio's own origin only.")
@click.option("--webhook-allow", "webhook_allow", multiple=True,
              help="HOST[:PORT] that webhookURL / uploadEndpoint may name (repeatable). Default: loopback only.")
def serve_command(bundle, host, port, provider, threads, queue, out_dir, api_key, allow_dirs, lora_dir, max_body_mb,
                  drain_seconds, public_url, cors_origins, webhook_allow):
    """Serve Runware audioInference requests over HTTP and WebSocket, with a web studio at /.

    \b
    POST /v1 (or /)              JSON array of tasks -> {"data": [...]} / {"errors": [...]}
    WebSocket /v1 (or /)         Runware's WebSocket protocol (authentication, ping, getResponse)
    GET  /v1/tasks/UUID/events   progress as server-sent events
    DELETE /v1/tasks/UUID        cancel a queued or running render
    GET  /health                 bundle, providers in use, queue depth
    GET  /v1/loras               adapters in --lora-dir
    GET  /                       the web studio (prompt, settings, progress, players)
    The bundle's sessions are created once; one render runs at a time, the rest wait in a FIFO queue.
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        _missing_extra(exc)
    busy = _port_taken(host, port)
    if busy:
        click.echo(f"acestep-edge serve: cannot listen on {host}:{port}: {busy.lower()}; stop what uses it or pick "
                   "another port with --port N (--port 0 takes any free one)", err=True)
        sys.exit(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if not _is_loopback(host):
        click.echo(f"warning: binding {host}: other machines can reach this server"
                   + ("" if api_key else "; set --api-key"), err=True)
    try:
        from .run import build_server

        server = build_server(bundle, host=host, port=port, provider=provider, threads=threads, queue=queue,
                              out_dir=out_dir, api_key=api_key, allow_dirs=allow_dirs, max_body_mb=max_body_mb,
                              drain_seconds=drain_seconds, public_url=public_url, cors_origins=cors_origins,
                              webhook_allow=webhook_allow, lora_dir=lora_dir)
    except (BundleError, OSError, RuntimeError, ValueError) as exc:
        click.echo(f"acestep-edge serve: {exc}", err=True)
        sys.exit(1)
    try:
        server.run()
    finally:  # also when uvicorn exits early (port in use): stop the worker thread, or Python waits on it
        server.renderer.close()
