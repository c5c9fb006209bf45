"""`acestep-edge fleet`: the server's endpoint on Ray Serve (local or existing cluster), and `fleet config`."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from acestep_edge.runtime.bundle import PROVIDERS
from acestep_edge.server.cli import _is_loopback, _port_taken

COLLECT_SECONDS = 10.0  # after the drain: time for clients to fetch the last results (as `serve`)
STEP_DELAY_ENV = "ACESTEP_EDGE_TEST_STEP_DELAY"  # test-only, as `serve`: seconds each render step sleeps


def _options(command):
    """The options `fleet` and `fleet config` share: `serve`'s, plus the cluster and replica counts."""
    for decorator in reversed([
        click.option("--bundle", type=click.Path(path_type=Path), envvar="ACESTEP_EDGE_BUNDLE",
                     help="Bundle folder (every node reads it at this path: a shared volume on a cluster)."),
        click.option("--address", default=None,
                     help="Ray cluster: 'auto' (the one `ray start` runs here) or ray://HOST:10001. "
                          "Without it a local Ray starts and stops with this command."),
        click.option("--host", default="127.0.0.1", show_default=True, help="Address Serve's HTTP proxy binds."),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port."),
        click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True,
                     help="Execution provider of each renderer (cuda/tensorrt: each replica asks Ray for a GPU)."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Intra-op threads per renderer replica; on CPU also the CPUs Ray reserves for it."),
        click.option("--gpus-per-replica", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
                     help="GPU share per renderer replica with --provider cuda/tensorrt."),
        click.option("--min-replicas", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Renderer replicas kept running when idle."),
        click.option("--max-replicas", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Renderer replicas a queue may scale up to."),
        click.option("--ingress-replicas", type=click.IntRange(min=1), default=1, show_default=True,
                     help="HTTP/WebSocket ingress replicas (job state is shared: any answers getResponse)."),
        click.option("--queue", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Tasks that may wait per ingress replica; more get HTTP 429."),
        click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
                     default=Path("acestep-edge-renders"), show_default=True,
                     help="Where renderers write URL results; a folder every node shares on a cluster."),
        click.option("--api-key", envvar="ACESTEP_EDGE_API_KEY", default=None,
                     help="Require this key (prefer the ACESTEP_EDGE_API_KEY variable)."),
        click.option("--allow-dir", "allow_dirs", multiple=True,
                     type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="A folder whose files inputs.audio / settings.referenceAudio may name (repeatable)."),
        click.option("--lora-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="Folder of adapters requests may name; same adapter sets go to replicas holding them."),
        click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=64, show_default=True,
                     help="Largest request body accepted (HTTP 413 above)."),
        click.option("--drain-seconds", type=click.FloatRange(min=0), default=30, show_default=True,
                     help="On SIGTERM: how long running renders may finish before they are cancelled."),
        click.option("--public-url", default=None, help="The URL clients reach the fleet at (base of audioURL)."),
        click.option("--cors-origin", "cors_origins", multiple=True, help="A web page origin that may call it."),
        click.option("--webhook-allow", "webhook_allow", multiple=True,
                     help="HOST[:PORT] that webhookURL / uploadEndpoint may name (repeatable)."),
    ]):
        command = decorator(command)
    return command


def _config(kw: dict, with_key: bool = True):
    from .app import FleetConfig

    if kw["bundle"] is None:
        raise click.UsageError("--bundle is required (or set ACESTEP_EDGE_BUNDLE)")
    server = {"allow_dirs": [str(Path(d).resolve()) for d in kw["allow_dirs"]],
              "max_body_bytes": int(kw["max_body_mb"] * 2**20), "bind_host": kw["host"],
              "public_url": kw["public_url"], "cors_origins": list(kw["cors_origins"]),
              "webhook_allow": list(kw["webhook_allow"])}
    if with_key and kw["api_key"]:
        server["api_key"] = kw["api_key"]
    try:
        return FleetConfig(bundle=str(kw["bundle"]), out_dir=str(kw["out_dir"]), provider=kw["provider"],
                           threads=kw["threads"], gpus_per_replica=kw["gpus_per_replica"],
                           min_replicas=kw["min_replicas"], max_replicas=kw["max_replicas"],
                           ingress_replicas=kw["ingress_replicas"], queue=kw["queue"],
                           drain_seconds=kw["drain_seconds"],
                           lora_dir=str(kw["lora_dir"]) if kw["lora_dir"] else None, server=server,
                           step_delay=float(os.environ.get(STEP_DELAY_ENV, "0") or 0))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.group("fleet", invoke_without_command=True)
@_options
@click.option("--collect-seconds", type=click.FloatRange(min=0), default=COLLECT_SECONDS, hidden=True,
              help="After the drain: how long the last results stay collectable.")
@click.pass_context
def fleet_command(ctx, collect_seconds, **kw):
    """Serve the same Runware endpoint as `serve` from a Ray Serve fleet of renderer replicas.

    \b
    acestep-edge fleet --bundle B                       local Ray: started here, stopped on exit
    acestep-edge fleet --bundle B --address auto        the cluster `ray start --head` runs here
    acestep-edge fleet --bundle B --address ray://H:10001
    acestep-edge fleet config --bundle B -o fleet.yaml  the Serve config for `serve deploy`
    Renderers autoscale between --min-replicas and --max-replicas on queue length, one render each.
    """
    if ctx.invoked_subcommand is not None:
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves this machine
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        click.echo(f"acestep-edge fleet needs the [fleet] extra ({exc.name} is missing): "
                   "pip install 'acestep-edge[fleet]'", err=True)
        sys.exit(1)
    config = _config(kw)
    if kw["address"] is None:
        busy = _port_taken(kw["host"], kw["port"])
        if busy:
            click.echo(f"acestep-edge fleet: cannot listen on {kw['host']}:{kw['port']}: {busy.lower()}; pick "
                       "another port with --port N", err=True)
            sys.exit(1)
    if not _is_loopback(kw["host"]):
        click.echo(f"warning: binding {kw['host']}: other machines can reach this fleet"
                   + ("" if kw["api_key"] else "; set --api-key"), err=True)
    run(config, kw["address"], kw["host"], kw["port"], collect_seconds)


def run(config, address: str | None, host: str, port: int, collect_seconds: float = COLLECT_SECONDS) -> None:
    """Start (or join) Ray, deploy, report the start-up time, and on SIGTERM/SIGINT drain and tear down."""
    import ray
    from ray import serve

    from .app import build_app
    from .registry_actor import kill_registry, registry, registry_name

    started, wall = time.perf_counter(), time.time()
    if address is None:  # a Ray of this command only: on loopback, no dashboard
        ray.init(include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address, logging_level="WARNING")
    ray_seconds = time.perf_counter() - started
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    name = registry_name(config.app_name)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)
        click.echo(f"acestep-edge fleet: ready at http://{host}:{port}/ in {time.perf_counter() - started:.1f} s "
                   f"(Ray {ray_seconds:.1f} s); renderers {config.min_replicas}..{config.max_replicas} × "
                   f"{config.provider}, {config.threads} thread(s) each", err=True)
        jobs = registry(name)
        threading.Thread(target=_report_first_render, args=(jobs, wall, stop), daemon=True).start()
        stop.wait()
        click.echo("acestep-edge fleet: draining (new tasks get 503)", err=True)
        ray.get(jobs.begin_drain.remote(config.drain_seconds))
        deadline = time.monotonic() + config.drain_seconds + 5.0
        while ray.get(jobs.active.remote()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(collect_seconds)  # the last results stay collectable a moment, as with `serve`
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            serve.delete(config.app_name)
            kill_registry(name)
            if address is None:
                serve.shutdown()
        finally:
            ray.shutdown()
    click.echo("acestep-edge fleet: stopped", err=True)


def _report_first_render(jobs, wall: float, stop: threading.Event) -> None:
    """Say once how long it took from this command's start to the first render it delivered."""
    import ray

    while not stop.wait(0.5):
        try:
            first = ray.get(jobs.first_render.remote(), timeout=10)
        except Exception:  # the registry is going away with the fleet
            return
        if first is not None:
            click.echo(f"acestep-edge fleet: first render delivered {first - wall:.1f} s after start", err=True)
            return


@fleet_command.command("config")
@_options
@click.option("--format", "fmt", type=click.Choice(["serve", "rayservice"]), default="serve", show_default=True,
              help="serve: a Serve config file for `serve deploy`; rayservice: a KubeRay RayService manifest.")
@click.option("--image", default="acestep-edge-fleet:latest", show_default=True,
              help="Container image of the RayService pods (Ray 2.60 with acestep-edge[fleet]; docs/fleet.md).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: stdout).")
def config_command(fmt, image, output, **kw):
    """Write the Serve config that deploys what `acestep-edge fleet` deploys (the API key is never written:
    set ACESTEP_EDGE_API_KEY in the replicas' environment)."""
    from .config_file import rayservice, serve_config, to_yaml

    config = _config(kw, with_key=False)
    document = serve_config(config, kw["host"], kw["port"])
    if fmt == "rayservice":
        document = rayservice(document, config, image)
    text = to_yaml(document)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)


@fleet_command.command("stop")
@click.option("--address", default="auto", show_default=True, help="The Ray cluster the fleet runs on.")
def stop_command(address):
    """Delete a fleet deployed with `serve deploy` (its application and its job registry actor)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from .app import APP_NAME
    from .registry_actor import kill_registry, registry_name

    ray.init(address=address, logging_level="WARNING")
    try:
        serve.delete(APP_NAME)
        kill_registry(registry_name(APP_NAME))
    finally:
        ray.shutdown()
    click.echo(f"acestep-edge fleet: deleted {APP_NAME}", err=True)
