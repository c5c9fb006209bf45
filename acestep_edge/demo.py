"""`acestep-edge demo`: the shipped example request rendered on the committed tiny random-weight bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from acestep_edge import DEMO_BUNDLE, DEMO_REQUEST
from acestep_edge.runtime.cli import common_options, run_and_print
from acestep_edge.runtime.vocab import MAX_SECONDS, MIN_SECONDS


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Folder for the rendered file.")
@click.option("--steps", type=click.IntRange(1, 200), default=None, help="Override the request's steps.")
@click.option("--duration", type=click.FloatRange(MIN_SECONDS, MAX_SECONDS), default=None,
              help="Override the request's duration.")
@common_options
def demo_command(out, steps, duration, provider, threads, progress):
    """Render a shipped example request on the committed tiny bundle.

    The tiny bundle has RANDOM weights: the result is noise, not music. It shows the whole path
    (request → prompts → text encoder → condition encoder → DiT steps → VAE → file) working.
    """
    request = json.loads(DEMO_REQUEST.read_text())
    for key, value in (("steps", steps), ("duration", duration)):
        if value is not None:
            request[key] = value
    click.echo("acestep-edge demo: random-weight tiny model — expect noise, not music.", err=True)
    start = time.perf_counter()
    out = out if out.endswith("/") else f"{out}/"  # always a folder, whatever its name
    (response,) = run_and_print(json.dumps(request), DEMO_BUNDLE, out, provider, threads, None, None, progress,
                                Path.cwd(), True, True)
    click.echo(f"wrote {response['audioURL']} in {time.perf_counter() - start:.1f} s "
               "(random weights: this is noise, not music)", err=True)
