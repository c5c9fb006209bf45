"""Activation memory of a two-layer XL-width DiT graph on ONNX Runtime CPU: peak RSS and time of one forward.

    python benchmarks/dit_activation_memory.py [--seconds 600] [--batch 2] [--threads 2] [--encoder-seq 300]
        [--variants default] [--workdir DIR] [--repeats 0] [--profile DIR] [--cap-gb 11]

What runs: the bundle's `dit` graph (export/graphs.py `DiTGraph`, adapter side-path inputs as the
default export has them) of a DiT with XL's width (hidden 2560, 32 query / 8 KV heads × 128, MLP
9,728, ±128 window) and two layers, one sliding and one full, seeded random weights (1.4 GB fp32).
It is exported once per variant with `export_program` / `save_program`, the bundle's own path
(graphs are cached in `--workdir`), each in a subprocess so the parent stays small. Then one
forward at `--seconds` of audio (T = 25·seconds latent frames, N = T/2 tokens) runs in a fresh
subprocess (onnxruntime + numpy + acestep_edge.runtime, no torch) that creates the session the way
the runtime does (runtime/bundle.py `session_options`) and feeds the adapter inputs as a render
without adapters does (rank-1 zeros).

Variants (`--variants`): `default` = the export and session options of the day, `before` = the
export defaults and session options before the activation-memory work (token-chunked MLP off,
arena and memory pattern on), or `name:key=value,...` with keys mlp_chunk (tokens per MLP Scan
step, 0 = off), sliding_attention (chunked, blocked, auto), arena (auto = the runtime's process-wide
arena growing by what is asked; 1 = the session's own ORT default arena; 0 = none), mem_pattern (0/1), ops,
full_attention, precision (fp32 or int8: the CPU int8 scheme, `apply_precision` as the bundle does, its
weights loaded in the form this CPU runs, runtime/int8_form.py). `int8` and `int8_before` are `default`
and `before` in int8.

Printed per run: peak RSS over the whole process (VmHWM: session creation, weights and the forward),
RSS after session creation, the forward's own extra (VmHWM reset after creation), wall time and
process CPU time (user + system) of the first forward, and of later ones when `--repeats` > 0.
`--profile DIR` also writes ONNX Runtime's per-node profile (with each node's output bytes).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

SEED = 0
PATCH = 2

_CHILD = r"""
import json, os, sys, time
import numpy as np, onnxruntime as ort
from pathlib import Path
from acestep_edge.runtime.bundle import session_options
from acestep_edge.runtime.cpu_features import int8_weight_form
from acestep_edge.runtime.int8_form import staged_model, stored_form

from acestep_edge.bench.system import peak_rss_bytes, reset_peak_rss, rss_bytes

MB = 2 ** 20

path, batch, frames, seq, repeats, threads, arena, mem_pattern, profile = sys.argv[1:10]
batch, frames, seq, repeats, threads = map(int, (batch, frames, seq, repeats, threads))
rng = np.random.default_rng(0)
if arena in ("0", "1"):  # the session's own arena (ORT's default, powers of two) or none, not the runtime's
    so = session_options(ort, threads)
    so.enable_cpu_mem_arena = bool(int(arena))
else:  # the runtime's DiT options: no memory pattern, the process-wide kSameAsRequested arena
    so = session_options(ort, threads, "dit")
if mem_pattern != "auto":
    so.enable_mem_pattern = bool(int(mem_pattern))
if profile:
    so.enable_profiling = True
    so.profile_file_prefix = profile
t0 = time.perf_counter()
stored = stored_form(Path(path).read_bytes())[0]  # an int8 graph: its weights in this CPU's form, as a render
staged, _, cleanup = staged_model(Path(path), int8_weight_form(stored)[0]) if stored else (path, None, lambda: None)
sess = ort.InferenceSession(str(staged), so, providers=["CPUExecutionProvider"])
cleanup()
create_s = time.perf_counter() - t0
feed = {}
for i in sess.get_inputs():
    dims = {"B": batch, "T": frames, "S": seq}
    shape = [d if isinstance(d, int) else dims.get(d, 1) for d in i.shape]
    if i.name.startswith("lora_"):
        feed[i.name] = np.zeros(shape, np.float32)  # no adapter: rank-1 zeros, as runtime/adapters.py
    elif i.name == "t":
        feed[i.name] = rng.random(shape, dtype=np.float32)
    elif i.name == "chunk_mask":
        feed[i.name] = np.ones(shape, np.float32)
    else:
        feed[i.name] = rng.standard_normal(shape, dtype=np.float32)
base = rss_bytes() / MB
hwm_create = peak_rss_bytes() / MB
if not reset_peak_rss():  # VmHWM from here on: the forward's own peak
    raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs): the forward's peak would include creation")
t0, c0 = time.perf_counter(), time.process_time()
out = sess.run(None, feed)[0]
first = (time.perf_counter() - t0, time.process_time() - c0)
peak_first = peak_rss_bytes() / MB
if out.shape != (batch, frames, 64) or not np.isfinite(out).all():
    raise SystemExit(f"bad output: shape {out.shape}, finite {np.isfinite(out).all()}")
times, cpu = [], []
for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    sess.run(None, feed)
    times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
peak = peak_rss_bytes() / MB
if profile:
    sess.end_profiling()
res = {"create_s": create_s, "rss_after_create_mb": base, "hwm_create_mb": hwm_create,
       "peak_first_mb": peak_first, "peak_mb": max(peak, hwm_create), "forward_extra_mb": peak - base,
       "first_s": first[0], "first_cpu_s": first[1], "out_rms": float(np.sqrt((out.astype(np.float64) ** 2).mean()))}
if times:
    res["later_s"] = sorted(times)[len(times) // 2]; res["later_cpu_s"] = sorted(cpu)[len(cpu) // 2]
print(json.dumps(res))
"""

# Before this benchmark's work: no token-chunked MLP, ORT's default arena and memory pattern.
BEFORE = {"mlp_chunk": 0, "sliding_attention": "blocked", "arena": 1, "mem_pattern": 1, "ops": "standard",
          "full_attention": "auto", "precision": "fp32"}
DEFAULT = {"mlp_chunk": None, "sliding_attention": "auto", "arena": "auto", "mem_pattern": "auto", "ops": "standard",
           "full_attention": "auto", "precision": "fp32"}
_TEXT_KEYS = ("ops", "full_attention", "sliding_attention", "precision")


def parse_variant(text: str) -> tuple[str, dict]:
    """'default' | 'before' | 'name:key=value,...' (keys of DEFAULT) → (name, settings)."""
    if text == "default":
        return text, dict(DEFAULT)
    if text == "before":
        return text, dict(BEFORE)
    if text in ("int8", "int8_before"):
        return text, dict(BEFORE if text == "int8_before" else DEFAULT, precision="int8")
    name, _, spec = text.partition(":")
    settings = dict(DEFAULT)
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in settings:
            raise argparse.ArgumentTypeError(f"unknown variant key {key!r}; keys: {', '.join(settings)}")
        settings[key] = value if key in _TEXT_KEYS or value == "auto" else int(value)
    return name, settings


def xl_two_layer_preset():
    import dataclasses

    from acestep_edge.models.config import xl_base

    base = xl_base()
    dit = dataclasses.replace(base.dit, num_hidden_layers=2, layer_types=("sliding_attention", "full_attention"))
    return dataclasses.replace(base, dit=dit)


def export_graph(path: Path, settings: dict) -> None:
    """(in a subprocess) seeded random XL-width two-layer DiT → `dit` graph at `path`, as the bundle exports it."""
    import inspect
    import types

    from acestep_edge.export.graphs import DiTGraph, graph_specs
    from acestep_edge.export.onnx_export import export_program, save_program
    from acestep_edge.models.dit import DiT
    from acestep_edge.models.random_checkpoint import random_tensor

    preset = xl_two_layer_preset()
    dit = DiT(preset.dit).eval()
    dit.load_state_dict({k: random_tensor(f"decoder.{k}", tuple(v.shape), SEED) for k, v in dit.state_dict().items()})
    spec = graph_specs(preset)["dit"]  # default adapter targets, as `acestep-edge export`
    kwargs = {"full_attention": settings["full_attention"]}
    known = inspect.signature(export_program).parameters  # so the same script measures older exporters
    if "mlp_chunk" in known:  # None: what export_bundle uses for a CPU fp32 graph
        from acestep_edge.kernels.lowering import default_mlp_chunk

        kwargs["mlp_chunk"] = default_mlp_chunk(False) if settings["mlp_chunk"] is None else settings["mlp_chunk"]
    if "sliding_attention" in known:
        kwargs["sliding_attention"] = settings["sliding_attention"]
    program = export_program(spec, DiTGraph(types.SimpleNamespace(decoder=dit)), preset, settings["ops"], **kwargs)
    if settings.get("precision", "fp32") != "fp32":
        from acestep_edge.export.precision import apply_precision

        apply_precision("dit", settings["precision"], program.model, "cpu")
    save_program(program, path)


def _cap(limit_bytes: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return set_limit


def ensure_graph(workdir: Path, name: str, settings: dict) -> Path:
    key = "-".join(f"{k}{settings[k]}" for k in ("mlp_chunk", "sliding_attention", "ops", "full_attention"))
    key += "" if settings.get("precision", "fp32") == "fp32" else f"-{settings['precision']}"
    path = workdir / f"dit-xl2-{key}.onnx"
    if not path.exists():
        print(f"exporting {name} → {path.name}", flush=True)
        code = ("import json, sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); "
                "import dit_activation_memory as m; m.export_graph(Path(sys.argv[1]), json.loads(sys.argv[2]))")
        subprocess.run([sys.executable, "-c", code, str(path), json.dumps(settings)], check=True,
                       cwd=Path(__file__).resolve().parent.parent)
    return path


def run_child(path: Path, settings: dict, args, profile: str) -> dict:
    frames = round(25 * args.seconds)
    argv = [sys.executable, "-c", _CHILD, str(path), str(args.batch), str(frames), str(args.encoder_seq),
            str(args.repeats), str(args.threads), str(settings["arena"]), str(settings["mem_pattern"]), profile]
    proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=_cap(int(args.cap_gb * 2**30)))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": tail[0][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="audio length (600 s = 7,500 DiT tokens)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder-seq", type=int, default=300, help="condition sequence length S")
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--repeats", type=int, default=0, help="timed forwards after the first")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dit_activation_memory"))
    parser.add_argument("--profile", type=Path, help="write ONNX Runtime profiles here")
    parser.add_argument("--cap-gb", type=float, default=11.0, help="address-space limit of each run")
    parser.add_argument("--json", type=Path, help="also append the rows here (JSON lines)")
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variants]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    import onnxruntime

    print(f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, "
          f"batch {args.batch}, {args.seconds:g} s = {round(25 * args.seconds) // PATCH} tokens, "
          f"S = {args.encoder_seq}, {' / '.join(sorted({v['precision'] for _, v in variants}))} weights", flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name, settings in variants:
        path = ensure_graph(args.workdir, name, settings)
        profile = ""
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile = str(args.profile / f"{name}-{args.seconds:g}s")
        row = {"variant": name, "seconds": args.seconds, **settings, **run_child(path, settings, args, profile)}
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
