"""`acestep-edge generate` and `acestep-edge demo`: requests in, audio files and Runware-style JSON out."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import noise
from .audio_io import EXTENSIONS
from .bundle import PROVIDERS, BundleError
from .delivery import deliver
from .request import RequestError, parse_requests
from .vocab import MAX_SECONDS, MIN_SECONDS
from .response import error_response, new_audio_uuid

EXIT_BAD_REQUEST, EXIT_FAILED = 2, 1


def _package_file(name: str) -> Path:
    """Files shipped inside the acestep_edge package (demo bundle and request)."""
    import acestep_edge

    return Path(acestep_edge.__file__).resolve().parent / name


def _fail(errors, exit_code: int, task_uuid=None) -> None:
    click.echo(json.dumps(error_response(errors, task_uuid=task_uuid), indent=2))
    sys.exit(exit_code)


def _read_request_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if not path.is_file():
        raise RequestError("request", f"request: file {source!r} does not exist; pass a JSON file or '-' for stdin",
                           "invalidFile")
    return path.read_text(encoding="utf-8")


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RequestError(what, f"{what}: cannot read {path!r} as a .npy array ({exc})", "invalidFile") from exc


def _progress(enabled: bool, label: str):
    """A progress callback drawing a bar on stderr when it is a terminal, else None."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    bar = click.progressbar(length=1, label=label, file=sys.stderr, show_pos=True)

    def update(done: int, total: int, index: int = 0) -> None:
        bar.length = total
        bar.update(done - bar.pos)

    return bar, update


def _output_path(out: Path | None, request, audio_uuid: str, multiple: bool) -> Path:
    name = f"{audio_uuid}.{EXTENSIONS[request.output_format]}"
    if out is None:
        return Path.cwd() / name
    if multiple or out.is_dir() or str(out).endswith(os.sep):
        out.mkdir(parents=True, exist_ok=True)
        return out / name
    return out


def render_requests(text: str, bundle: Path, out: Path | None, provider: str, threads: int | None,
                    save_latents: str | None, noise_path: str | None, show_progress: bool = True,
                    noise_source: str | None = None, noise_gpu: str | None = None,
                    loras: tuple[str, ...] = ()) -> list[dict]:
    """Validate everything first (adapters included), then render; returns the Runware-style responses.

    `noise_source` / `noise_gpu` are the defaults for requests whose settings name none; `loras` are
    `--lora PATH[=WEIGHT]` options, added to every request's `lora` list.
    """
    from .pipeline import GenerationConfig, Pipeline  # sessions only once the requests are known to be valid

    requests = parse_requests(text)
    if loras:
        from .adapters import cli_refs

        extra = cli_refs(loras)
        requests = [dataclasses.replace(r, lora=r.lora + extra) for r in requests]
    renders = sum(r.number_results for r in requests)
    if (noise_path or save_latents) and renders != 1:
        raise RequestError("noise" if noise_path else "save-latents",
                           "--noise/--save-latents take one render: send one request with numberResults 1",
                           "conflictingParameters")
    noise = _load_npy(noise_path, "noise").astype(np.float32, copy=False) if noise_path else None
    pipeline = Pipeline.load(bundle, provider=provider, threads=threads,
                             config=GenerationConfig(noise_source=noise_source, noise_gpu=noise_gpu))
    for request in requests:  # a request's GPU against a CLI source: refused before anything renders
        pipeline.noise_source(request)
        pipeline.adapters.resolve(request.lora, request.task_uuid)  # every adapter read and checked
    responses = []
    for request in requests:
        bar, update = _progress(show_progress, f"rendering {request.task_uuid[:8]}")
        try:
            results = pipeline.generate_all(request, noise=noise, progress=update)
        finally:
            if bar is not None:
                bar.render_finish()
        for result in results:
            responses.append(_deliver(request, result, out, renders > 1, save_latents))
    return responses


def _deliver(request, result, out: Path | None, multiple: bool, save_latents: str | None) -> dict:
    audio_uuid = new_audio_uuid()
    path = _output_path(out, request, audio_uuid, multiple) if request.output_type == "URL" else None
    return deliver(request, result, path, audio_uuid=audio_uuid, save_latents=save_latents)


def _check_gpu(ctx, param, value):
    if value is None:
        return None
    try:
        return noise.gpu(value).name
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _common_options(f):
    f = click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True,
                     help="ONNX Runtime execution provider; the response reports the providers actually used.")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Intra-op threads per session (default: all cores).")(f)
    return f


@click.command("generate")
@click.argument("request_file", metavar="REQUEST.json|-")
@click.option("--bundle", "bundle", type=click.Path(path_type=Path), envvar="ACESTEP_EDGE_BUNDLE", required=True,
              help="Bundle folder from `acestep-edge export` (or set ACESTEP_EDGE_BUNDLE).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file, or a folder (several results). Default: <audioUUID>.<ext> in the current folder.")
@_common_options
@click.option("--save-latents", type=click.Path(dir_okay=False), default=None,
              help="Also write the final latents as .npy (float32, [1, T, 64]).")
@click.option("--noise", "noise_path", type=click.Path(dir_okay=False), default=None,
              help="Initial noise as .npy (float32, [1, T, 64]) instead of drawing it from the seed.")
@click.option("--noise-source", type=click.Choice(noise.SOURCES), default=None,
              help="How the seed becomes noise when a request's settings.noise is absent: torch-cuda (default: "
                   "the official code's draw on a CUDA GPU), torch-cpu (its draw on a CPU), numpy.")
@click.option("--noise-gpu", callback=_check_gpu, default=None,
              help=f"GPU whose torch-cuda draw to reproduce when settings.noiseGpu is absent: "
                   f"{', '.join(noise.GPU_PRESETS)}, an SM count or SMSxTHREADS (default h100; "
                   "the same on every GPU up to 55 s).")
@click.option("--lora", "loras", multiple=True, metavar="PATH[=WEIGHT]",
              help="A LoRA/LoKr adapter (PEFT folder or .safetensors file) applied to every request, weight "
                   "-2..2 (default 1). Repeat to stack adapters; they follow the request's own `lora` list.")
def generate_command(request_file, bundle, out, provider, threads, save_latents, noise_path, noise_source,
                     noise_gpu, loras):
    """Render a Runware audioInference request (or a JSON array of them) and print the response JSON.

    Every request is validated before anything renders; a bad field gives a Runware-style error
    naming it, a non-zero exit code, and no output file. A progress bar goes to stderr on a terminal.
    """
    if noise_gpu is not None and noise_source not in (None, "torch-cuda"):
        raise click.BadParameter(f"applies to --noise-source torch-cuda only (got {noise_source})",
                                 param_hint="--noise-gpu")
    try:
        text = _read_request_text(request_file)
        responses = render_requests(text, bundle, out, provider, threads, save_latents, noise_path,
                                    noise_source=noise_source, noise_gpu=noise_gpu, loras=loras)
    except RequestError as exc:
        _fail(exc, EXIT_BAD_REQUEST, getattr(exc, "task_uuid", None))
    except (BundleError, RuntimeError, OSError, ValueError) as exc:
        _fail(exc, EXIT_FAILED)
    single = not text.lstrip().startswith("[") and len(responses) == 1
    click.echo(json.dumps(responses[0] if single else responses, indent=2))


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True,
              help="Folder for the rendered file.")
@click.option("--steps", type=click.IntRange(1, 200), default=None, help="Override the request's steps.")
@click.option("--duration", type=click.FloatRange(MIN_SECONDS, MAX_SECONDS), default=None, help="Override the request's duration.")
@_common_options
def demo_command(out, steps, duration, provider, threads):
    """Render a shipped example request on the committed tiny bundle.

    The tiny bundle has RANDOM weights: the result is noise, not music. It shows the whole path
    (request → prompts → text encoder → condition encoder → 50 DiT steps → VAE → file) working.
    """
    request = json.loads(_package_file("demo_request.json").read_text())
    request["outputFormat"] = "WAV"
    for key, value in (("steps", steps), ("duration", duration)):
        if value is not None:
            request[key] = value
    click.echo("acestep-edge demo: random-weight tiny model — expect noise, not music.", err=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        responses = render_requests(json.dumps(request), _package_file("demo_bundle"), out, provider, threads,
                                    None, None)
    except (RequestError, BundleError, RuntimeError, OSError, ValueError) as exc:
        _fail(exc, EXIT_FAILED)
    click.echo(json.dumps(responses[0], indent=2))
    click.echo(f"wrote {responses[0]['audioURL']} in {time.perf_counter() - start:.1f} s "
               "(random weights: this is noise, not music)", err=True)
