"""`acestep-edge generate`: requests in, audio files and Runware-style JSON out."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import click
import numpy as np

from . import noise
from .bundle import PROVIDERS, TEXT2MUSIC_GRAPHS, BundleError
from .delivery import deliver
from .outputs import OutputPlan, apply_out_format, check_out_format
from .progress import MODES as PROGRESS_MODES
from .progress import Progress
from .request import RequestError, parse_requests
from .request_files import resolve_sources
from .response import error_response
from .wire import parse_body

EXIT_BAD_REQUEST, EXIT_FAILED = 2, 1


class TaskFailure(Exception):
    """A failure after validation, carrying the taskUUIDs it concerns (Runware errors name the task)."""

    def __init__(self, error: BaseException, task_uuids: list[str]):
        super().__init__(str(error))
        self.error, self.task_uuids = error, task_uuids


def fail(errors, exit_code: int, task_uuid=None) -> None:
    click.echo(json.dumps(error_response(errors, task_uuid=task_uuid), indent=2))
    sys.exit(exit_code)


def _fail_tasks(failure: TaskFailure) -> None:
    entries = [error_response(failure.error, task_uuid=u)["errors"][0] for u in failure.task_uuids or [None]]
    click.echo(json.dumps({"errors": entries}, indent=2))
    sys.exit(EXIT_BAD_REQUEST if isinstance(failure.error, RequestError) else EXIT_FAILED)


def read_request_text(source: str) -> tuple[str, Path, bool]:
    """(text, folder relative source paths are read from, whether it came on stdin)."""
    if source == "-":
        return sys.stdin.read(), Path.cwd(), True
    path = Path(source)
    if not path.is_file():
        raise RequestError("request", f"request: file {source!r} does not exist; pass a JSON file or '-' for stdin",
                           "invalidFile")
    return path.read_text(encoding="utf-8"), path.resolve().parent, False


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RequestError(what, f"{what}: cannot read {path!r} as a .npy array ({exc})", "invalidFile") from exc


@contextlib.contextmanager
def _one_warning_line():
    """Library warnings (a GPU provider that fell back to the CPU, ...) as one stderr line: the response lists them all."""
    seen: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        if not seen:
            click.echo(f"warning: {message} (every warning is listed in the response's \"warnings\")", err=True)
        seen.append(str(message))

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _quiet_onnxruntime() -> None:
    # ORT logs each provider it cannot load (coloured, per session); the runtime reports that itself, once.
    import onnxruntime as ort

    ort.set_default_logger_severity(3)


def render_requests(text: str, bundle: Path, out: str | None, provider: str, threads: int | None,
                    save_latents: str | None, noise_path: str | None, progress: str = "auto",
                    base: Path | None = None, from_stdin: bool = True, noise_source: str | None = None,
                    noise_gpu: str | None = None, loras: tuple[str, ...] = ()) -> list[dict]:
    """Validate everything (requests, sources, adapters, output paths, bundle) first, then render; the
    Runware responses.

    `noise_source` / `noise_gpu` are the defaults for requests whose settings name none; `loras` are
    `--lora PATH[=WEIGHT]` options, added to every request's `lora` list.
    """
    from .pipeline import GenerationConfig, Pipeline  # sessions only once the requests are known to be valid

    items = parse_body(text)
    resolve_sources(items, base or Path.cwd(), from_stdin)
    apply_out_format(items, out)
    requests = parse_requests(items)
    check_out_format(requests, out)
    if loras:
        from .adapters import cli_refs

        extra = cli_refs(loras)
        requests = [dataclasses.replace(r, lora=r.lora + extra) for r in requests]
    uuids = [r.task_uuid for r in requests]
    renders = sum(r.number_results for r in requests)
    if (noise_path or save_latents) and renders != 1:
        raise RequestError("noise" if noise_path else "save-latents",
                           "--noise/--save-latents take one render: send one request with numberResults 1",
                           "conflictingParameters", uuids[0])
    noise = _load_npy(noise_path, "noise").astype(np.float32, copy=False) if noise_path else None
    plan = OutputPlan.build(requests, out, save_latents)
    _quiet_onnxruntime()
    try:
        pipeline = Pipeline.load(bundle, provider=provider, threads=threads,
                                 config=GenerationConfig(noise_source=noise_source, noise_gpu=noise_gpu))
        pipeline.bundle.require(TEXT2MUSIC_GRAPHS)
    except BundleError as exc:
        raise TaskFailure(exc, uuids) from exc
    for request in requests:  # a request's GPU against a CLI source: refused before anything renders
        pipeline.noise_source(request)
        pipeline.adapters.resolve(request.lora, request.task_uuid)  # every adapter read and checked
    plan.prepare(uuids[0])
    responses = []
    for request, row in zip(requests, plan.results):
        report = Progress(progress, label=request.task_uuid[:8])
        try:
            results = pipeline.generate_all(request, noise=noise, stages=report)
            for k, (result, (audio_uuid, path)) in enumerate(zip(results, row)):
                report("write", k, len(results))
                responses.append(deliver(request, result, path, audio_uuid=audio_uuid, save_latents=save_latents))
            report("write", len(results), len(results))
        except RequestError:
            raise
        except (BundleError, RuntimeError, OSError, ValueError) as exc:
            raise TaskFailure(exc, [request.task_uuid]) from exc
        finally:
            report.close()
    return responses


def common_options(f):
    f = click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True,
                     help="ONNX Runtime execution provider; the response reports the providers actually used.")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Intra-op threads per session (default: all cores).")(f)
    f = click.option("--progress", type=click.Choice(PROGRESS_MODES), default="auto", show_default=True,
                     help="Progress on stderr per stage: a bar on a terminal (auto), one line per stage (plain), "
                          "or none.")(f)
    return f


def run_and_print(text, bundle, out, provider, threads, save_latents, noise_path, progress, base, from_stdin,
                  single: bool, **noise_defaults) -> list[dict]:
    """render_requests with every failure turned into Runware's error JSON and an exit code."""
    try:
        with _one_warning_line():
            responses = render_requests(text, bundle, out, provider, threads, save_latents, noise_path, progress,
                                        base, from_stdin, **noise_defaults)
    except RequestError as exc:
        fail(exc, EXIT_BAD_REQUEST, getattr(exc, "task_uuid", None))
    except TaskFailure as exc:
        _fail_tasks(exc)
    except (BundleError, RuntimeError, OSError, ValueError) as exc:
        fail(exc, EXIT_FAILED)
    click.echo(json.dumps(responses[0] if single and len(responses) == 1 else responses, indent=2))
    return responses


def _check_gpu(ctx, param, value):
    if value is None:
        return None
    try:
        return noise.gpu(value).name
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("generate")
@click.argument("request_file", metavar="REQUEST.json|-")
@click.option("--bundle", "bundle", type=click.Path(path_type=Path), envvar="ACESTEP_EDGE_BUNDLE", required=True,
              help="Bundle folder from `acestep-edge export` (or set ACESTEP_EDGE_BUNDLE).")
@click.option("--out", type=click.Path(), default=None,
              help="Output file (its extension picks the format when the request sets no outputFormat; several "
                   "results become NAME-1.ext, NAME-2.ext) or a folder. Default: <audioUUID>.<ext> here.")
@common_options
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
def generate_command(request_file, bundle, out, provider, threads, progress, save_latents, noise_path, noise_source,
                     noise_gpu, loras):
    """Render a Runware audioInference request (or a JSON array of them) and print the response JSON.

    Every request, source file and output path is checked before anything renders; a bad field gives a
    Runware-style error naming it, a non-zero exit code, and no output file. Relative source paths in a
    request file are read from that file's folder.
    """
    if noise_gpu is not None and noise_source not in (None, "torch-cuda"):
        raise click.BadParameter(f"applies to --noise-source torch-cuda only (got {noise_source})",
                                 param_hint="--noise-gpu")
    try:
        text, base, from_stdin = read_request_text(request_file)
    except RequestError as exc:
        fail(exc, EXIT_BAD_REQUEST)
    single = not text.lstrip().startswith("[")
    run_and_print(text, bundle, out, provider, threads, save_latents, noise_path, progress, base, from_stdin, single,
                  noise_source=noise_source, noise_gpu=noise_gpu, loras=loras)
