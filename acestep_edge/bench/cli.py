"""The `acestep-edge bench` command (registered lazily by acestep_edge/cli.py)."""

from __future__ import annotations

import sys

import click

from acestep_edge.runtime.bundle import PROVIDERS


def _log(msg: str) -> None:
    click.echo(msg, err=True)


@click.command("bench")
@click.option("--bundle", "bundles", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Bundle to time; repeat it to compare precisions (e.g. an fp32 and an fp16 export) in one run.")
@click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True,
              help="ONNX Runtime execution provider; the records list the providers actually used.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads for ONNX Runtime and for torch (default: all cores).")
@click.option("--durations", type=click.FloatRange(min=0, min_open=True), multiple=True, default=None,
              help="Audio durations in seconds, e.g. --durations 10 60 180 600 (values after the first are "
                   "taken as the DURATIONS arguments). Default: 10 60 180.")
@click.option("--steps", type=click.IntRange(min=1), default=8, show_default=True,
              help="Sampling steps per render. Fewer than 50 is fine: ms per step is measured, and the 50-step "
                   "totals are reported as extrapolations, labelled so.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed renders per duration, after one untimed warm-up render; medians are reported.")
@click.option("--output", type=click.Path(dir_okay=False), default="bench-results.jsonl", show_default=True,
              help="JSON-lines file the records are appended to (one line per side, precision and duration).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG of end-to-end latency against duration (needs the [bench] extra).")
@click.option("--torch", "with_torch", is_flag=True,
              help="Also time the PyTorch reference on the same weights, request, noise, steps and threads "
                   "(needs the [export] extra and the checkpoint the bundle was exported from).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="Checkpoint folder for --torch (default: the one recorded in the first bundle's manifest).")
@click.option("--torch-dtype", "torch_dtypes", multiple=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              default=("auto",), show_default=True,
              help="Reference precision(s); auto = bf16 on CUDA and on CPUs with native bf16, else fp32.")
@click.option("--cuda-graph", is_flag=True, help="Capture the DiT in CUDA graphs (cuda provider only).")
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True, help="GPU index.")
@click.argument("more_durations", metavar="[DURATIONS]...", nargs=-1, type=click.FloatRange(min=0, min_open=True))
def bench_command(bundles, provider, threads, durations, steps, repeats, output, plot_path, with_torch, checkpoint,
                  torch_dtypes, cuda_graph, device_id, more_durations):
    """Time renders stage by stage on one or more bundles, optionally beside the PyTorch reference.

    \b
    Per duration: session load, text and condition encode, DiT ms/step (median, p90) and total, VAE
    decode (total, per chunk), write, end-to-end and real-time factor, peak host (and GPU) memory,
    achieved DiT TFLOP/s against an analytic FLOP count and its share of the measured GEMM peak.
    Example: acestep-edge bench --bundle ./acestep-xl-fp32 --durations 10 60 180 --steps 8 --torch
    """
    from acestep_edge.runtime.bundle import BundleError, read_manifest
    from acestep_edge.runtime.device import DeviceOptions

    from . import report
    from .gemm import numpy_gemm_peak, ort_gemm_peak
    from .onnx_side import bench_onnx
    from .system import info_line, system_info

    durations = list(durations or ()) + list(more_durations)
    durations = list(dict.fromkeys(durations)) or [10.0, 60.0, 180.0]
    if cuda_graph and provider != "cuda":
        raise click.BadParameter("CUDA graphs need --provider cuda", param_hint="--cuda-graph")
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'acestep-edge[bench]'") from None
    torch_side = None
    if with_torch:
        try:
            from . import torch_side
        except ImportError as exc:
            raise click.ClickException(str(exc)) from exc
    device = DeviceOptions(device_id=device_id, cuda_graph=cuda_graph)
    try:
        manifests = [read_manifest(b) for b in bundles]
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    ckpt = None
    if with_torch:
        try:
            ckpt = torch_side.checkpoint_for(manifests[0], checkpoint)
        except FileNotFoundError as exc:
            raise click.BadParameter(str(exc), param_hint="--checkpoint") from exc

    info = system_info(provider, threads)  # printed once, above the table
    peaks = [ort_gemm_peak(provider, threads, "float32", device_id=device_id)]
    if provider != "cpu":
        peaks.append(ort_gemm_peak(provider, threads, "float16", device_id=device_id))
    else:
        peaks.append(numpy_gemm_peak())
    for p in peaks:
        _log(f"GEMM peak ({p['engine']} {p['provider']} {p['dtype']} {p['size']}³): {p['tflops']:.3f} TFLOP/s")
    records = []

    def keep(new: list[dict]) -> None:
        # Appended as each side finishes, so an interrupted run keeps what was measured.
        for record in new:
            record["system"] = info
            record["gemm_peaks"] = peaks
        report.append_jsonl(output, new)
        records.extend(new)

    for bundle, manifest in zip(bundles, manifests):
        precision = manifest["graphs"].get("dit", {}).get("precision", "fp32")
        peak = next((p for p in peaks if p["engine"] == "onnxruntime" and p["dtype"] == (
            "float16" if precision in ("fp16", "mixed") and provider != "cpu" else "float32")), peaks[0])
        try:
            keep(bench_onnx(bundle, provider, threads, durations, steps, repeats, device, peak, _log))
        except BundleError as exc:
            raise click.ClickException(str(exc)) from exc
    if with_torch:
        dev = "cuda" if provider != "cpu" else "cpu"
        info = system_info(provider, threads)  # now with the torch version
        for name in dict.fromkeys(torch_side.fastest_dtype(dev) if d == "auto" else d for d in torch_dtypes):
            keep(torch_side.bench_torch(ckpt, manifests[0], name, dev, threads, durations, steps, repeats, _log))
    click.echo(info_line(info))
    click.echo(report.table(records))
    for line in report.ratios(records):
        click.echo(line)
    for warning in sorted({w for r in records for w in r.get("warnings", [])}):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"appended {len(records)} records to {output}", err=True)
    if plot_path:
        click.echo(f"wrote {report.plot(records, plot_path)}", err=True)


if __name__ == "__main__":
    sys.exit(bench_command())
