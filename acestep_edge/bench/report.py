"""Bench output: JSON lines appended to a file, a plain-text table, and a latency-vs-duration PNG."""

from __future__ import annotations

import json
import os
from pathlib import Path

COLUMNS = [  # (header, key, format)
    ("side", "side", "{}"), ("prec", "precision", "{}"), ("int8 w", "int8_weights", "{}"),
    ("provider", "provider", "{}"), ("dur s", "duration_s", "{:g}"),
    ("steps", "steps", "{}"), ("load s", "session_load_s", "{:.2f}"), ("text s", "text_encoder_s", "{:.3f}"),
    ("cond s", "condition_encoder_s", "{:.3f}"), ("DiT ms/step", "dit_ms_per_step_median", "{:.1f}"),
    ("p90", "dit_ms_per_step_p90", "{:.1f}"), ("DiT s", "dit_total_s", "{:.2f}"), ("VAE s", "vae_total_s", "{:.2f}"),
    ("VAE/chunk s", "vae_per_chunk_s", "{:.3f}"), ("write s", "write_s", "{:.3f}"), ("e2e s", "end_to_end_s", "{:.2f}"),
    ("RTF", "rtf", "{:.3f}"), ("e2e@50 s*", "end_to_end_50_steps_s_extrapolated", "{:.1f}"),
    ("TFLOP/s", "dit_tflops_achieved", "{:.3f}"), ("% peak", "dit_share_of_peak", "{:.0%}"),
    ("peak GB", "peak_host_memory_gb", "{:.2f}"), ("dev GB", "device_memory_gb", "{:.2f}"),
]


def _cell(record: dict, key: str, fmt: str) -> str:
    value = record.get(key)
    return "-" if value is None else fmt.format(value)


def table(records: list[dict]) -> str:
    rows = [[h for h, _, _ in COLUMNS]] + [[_cell(r, k, f) for _, k, f in COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = ["* e2e@50: the measured render with its DiT time extrapolated to 50 steps (median ms per batch-1 "
             "and batch-2 call × the 50-step guidance mix); '-' when 50 steps were measured.",
             "RTF = end-to-end seconds / audio seconds (below 1 is faster than real time). TFLOP/s from the "
             "analytic DiT FLOP count (acestep_edge/bench/flops.py); % peak against the measured GEMM peak."]
    return "\n".join(lines + notes)


def ratios(records: list[dict]) -> list[str]:
    """torch / onnx end-to-end and DiT-step ratios per duration, from this one run."""
    out = []
    for r in records:
        if r["side"] != "torch":
            continue
        for o in records:
            if o["side"] == "onnx" and o["duration_s"] == r["duration_s"] and o["steps"] == r["steps"]:
                out.append(f"{r['duration_s']:g} s: torch {r['precision']} / onnx {o['precision']} {o['provider']}: "
                           f"DiT step {r['dit_ms_per_step_median'] / o['dit_ms_per_step_median']:.2f}×, "
                           f"end-to-end {r['end_to_end_s'] / o['end_to_end_s']:.2f}×")
    return out


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append one line per record; flushed and fsynced so an interrupted run keeps what finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def plot(records: list[dict], path: str | Path) -> Path:
    """End-to-end latency against duration, one line per (side, precision, provider); PNG written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'acestep-edge[bench]'") from exc
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        label = f"{r['side']} {r['precision']} {r['provider']} ({r['steps']} steps)"
        series.setdefault(label, []).append((r["duration_s"], r["end_to_end_s"]))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("audio duration (s)")
    ax.set_ylabel("end-to-end render time (s)")
    ax.set_title("acestep-edge bench")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
