"""Export-time parity: ONNX Runtime (CPU, fp32) against the torch module on fresh random inputs.

The error of a float output is max|ort − torch| / max|torch| (the budgeted figure; the RMS ratio
‖ort − torch‖ / ‖torch‖ is recorded beside it); integer outputs (FSQ indices) are
compared exactly and their mismatch count is recorded. Torch references are computed first so the
caller can free the torch module before the ONNX Runtime session is built (XL-size memory).
"""

from __future__ import annotations

import numpy as np
import torch

from acestep_edge.export.graphs import GraphSpec, example_sizes


def parity_cases(spec: GraphSpec, preset) -> list[tuple[str, dict]]:
    """Batch 1 and 2, odd and even T, and sequences longer than several attention windows."""
    w = preset.dit.sliding_window
    patch = preset.dit.patch_size
    long_tokens = 4 * w + 3  # several ±window bands, not a multiple of the window
    if spec.name == "dit":
        long = {"T": patch * long_tokens + 1, "S": 2 * w + 5}
        return [("b1_odd_T", example_sizes(1, 37)), ("b2_long_odd_T", example_sizes(2, seed_sizes=long)),
                ("b1_even_T", example_sizes(1, 24))]
    if spec.name == "condition_encoder":
        long = {"Ll": long_tokens, "Lt": 2 * w + 1, "Fr": 2 * long_tokens + 1}
        return [("b1", example_sizes(1)), ("b2_long", example_sizes(2, seed_sizes=long))]
    if spec.name == "text_encoder":
        return [("b1", example_sizes(1)), ("b2_long", example_sizes(2, seed_sizes={"Lt": 33, "Ll": 65}))]
    if spec.name in ("vae_decoder", "vae_encoder"):
        return [("b1_odd_T", example_sizes(1, 3)), ("b2_even_T", example_sizes(2, 4))]
    if spec.name == "audio_tokenizer":
        return [("b1", example_sizes(1, 10)), ("b2_long", example_sizes(2, 5 * (w + 3)))]
    if spec.name == "audio_detokenizer":
        return [("b1", example_sizes(1, seed_sizes={"T5": 2})), ("b2_long", example_sizes(2, seed_sizes={"T5": w + 3}))]
    raise ValueError(f"no parity cases for graph {spec.name!r}")


def case_inputs(spec: GraphSpec, preset, cases, seed: int = 1234) -> list[tuple]:
    """Fresh random inputs per case (a different seed from the export example)."""
    return [spec.example(sizes, preset, torch.Generator().manual_seed(seed + i)) for i, (_, sizes) in enumerate(cases)]


@torch.no_grad()
def torch_references(module: torch.nn.Module, inputs: list[tuple]) -> list[list[np.ndarray]]:
    refs = []
    for args in inputs:
        out = module.eval()(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        refs.append([o.detach().float().numpy() if o.is_floating_point() else o.numpy() for o in out])
    return refs


def ort_outputs(onnx_path, spec: GraphSpec, inputs: list[tuple]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in spec.inputs]
    results = []
    for args in inputs:
        feed = {n: a.numpy() for n, a in zip(names, args)}
        results.append(session.run([o.name for o in spec.outputs], feed))
    return results


def compare(spec: GraphSpec, cases, refs, outs) -> dict:
    """The manifest's `parity` record."""
    records = []
    worst = worst_rms = 0.0
    for (label, sizes), ref, out in zip(cases, refs, outs):
        per_output, rms = {}, {}
        record = {"label": label, "sizes": {k: sizes[k] for k in _symbols(spec) if k in sizes}}
        for io, r, o in zip(spec.outputs, ref, out):
            if r.shape != o.shape:
                raise ValueError(f"graph {spec.name!r} case {label}: output {io.name} has shape {o.shape}, "
                                 f"torch gives {r.shape}")
            if np.issubdtype(r.dtype, np.integer):
                record[f"{io.name}_mismatches"] = int((r != o).sum())
                continue
            denom = max(float(np.abs(r).max()), 1e-30)
            diff = o.astype(np.float64) - r.astype(np.float64)
            err = float(np.abs(diff).max()) / denom
            per_output[io.name] = err
            rms[io.name] = float(np.sqrt(np.mean(diff ** 2)) / max(np.sqrt(np.mean(r.astype(np.float64) ** 2)), 1e-30))
            worst = max(worst, err)
            worst_rms = max(worst_rms, rms[io.name])
        record["max_rel_err"] = max(per_output.values(), default=0.0)
        record["outputs"] = per_output
        record["rms_rel_err"] = rms
        records.append(record)
    return {"reference": "torch fp32", "runtime": "onnxruntime CPU", "max_rel_err": worst,
            "rms_rel_err": worst_rms, "cases": records}


def _symbols(spec: GraphSpec) -> list[str]:
    seen = []
    for io in spec.inputs:
        for d in io.shape:
            if isinstance(d, str) and d not in seen:
                seen.append(d)
    if spec.name == "vae_encoder":
        seen.append("T")  # N = T·hop in the example
    if spec.name == "audio_tokenizer":
        seen.append("T")
    return seen


def stft_log_magnitude_distance(ours: np.ndarray, ref: np.ndarray, ffts=(2048, 1024, 512, 256),
                                floor_db: float = -80.0) -> float:
    """Multi-resolution STFT log-magnitude distance in dB: the mean |20·log10 |S_ours| − 20·log10 |S_ref||
    over Hann-windowed STFTs at each FFT size (hop = size/4), every channel and bin, averaged over sizes.

    Magnitudes are floored at `floor_db` below the reference's peak bin, so inaudible bins do not
    dominate. 0 dB is identical audio. A spectral measure, not waveform correlation, because a small
    phase shift leaves the sound unchanged but decorrelates the waveform.
    """
    ours, ref = np.atleast_2d(np.asarray(ours, np.float64)), np.atleast_2d(np.asarray(ref, np.float64))
    if ours.shape != ref.shape:
        raise ValueError(f"audio shapes differ: {ours.shape} vs {ref.shape}")
    dists = []
    for n in ffts:
        if ref.shape[-1] < n:
            continue
        a, b = _stft_mag(ours, n), _stft_mag(ref, n)
        floor = b.max() * 10 ** (floor_db / 20) + 1e-30
        dists.append(float(np.mean(np.abs(20 * np.log10(np.maximum(a, floor)) - 20 * np.log10(np.maximum(b, floor))))))
    if not dists:
        raise ValueError(f"audio of {ref.shape[-1]} samples is shorter than the smallest FFT ({min(ffts)})")
    return float(np.mean(dists))


def _stft_mag(x: np.ndarray, n: int) -> np.ndarray:
    hop = n // 4
    frames = 1 + (x.shape[-1] - n) // hop
    idx = np.arange(n)[None, :] + hop * np.arange(frames)[:, None]
    return np.abs(np.fft.rfft(x[..., idx] * np.hanning(n), axis=-1))
