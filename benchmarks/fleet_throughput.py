"""Fleet vs serve on one machine: renders/minute, ingress overhead per request, `fleet` start → first render.

Runs, one after another (never two at once): one `acestep-edge serve` at 2 threads (throughput) and at
1 thread (overhead baseline); `acestep-edge fleet` with 1 and with 2 renderer replicas at 1 thread
each (each with its own local Ray, started and stopped here). Throughput: --renders sync requests
sent at once, renders/minute from the wall time of the batch. Overhead: --sequential requests one at
a time, median latency of fleet (1 replica, 1 thread) minus serve (1 thread). Prints a table. Run
from the repository root, on a quiet machine:

    python benchmarks/fleet_throughput.py [--bundle B] [--duration 30] [--steps 8] [--renders 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "acestep_edge" / "demo_bundle"


def post(port: int, body: list, timeout: float = 3600) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def render(port: int, args) -> float:
    """One sync render; its latency in seconds."""
    task = {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "warm analog synth pop",
            "duration": args.duration, "steps": args.steps, "seed": 1, "outputFormat": "WAV"}
    started = time.perf_counter()
    status, body = post(port, [task])
    if status != 200:
        raise RuntimeError(f"render failed: {status} {body}")
    return time.perf_counter() - started


def batch(port: int, args) -> float:
    """--renders renders sent at once; renders per minute."""
    threads = [threading.Thread(target=render, args=(port, args)) for _ in range(args.renders)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return args.renders / (time.perf_counter() - started) * 60


def sequential(port: int, args) -> float:
    return statistics.median(render(port, args) for _ in range(args.sequential))


def wait_ready(port: int, proc: subprocess.Popen, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3]} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("did not become ready")


def start(kind: str, port: int, out: Path, args, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "acestep_edge.cli", kind, "--bundle", str(args.bundle), "--port", str(port),
               "--out-dir", str(out), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=out.parent)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(kind: str, extra: list[str], args, folder: Path, overhead: bool) -> dict:
    port = args.port
    began = time.perf_counter()
    proc = start(kind, port, folder / f"{kind}-{len(list(folder.iterdir()))}", args, extra)
    try:
        wait_ready(port, proc)
        render(port, args)  # the first render (sessions warm from here on)
        first = time.perf_counter() - began
        row = {"first": first, "rpm": batch(port, args)}
        if overhead:
            row["latency"] = sequential(port, args)
        return row
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--renders", type=int, default=8, help="renders per throughput batch")
    parser.add_argument("--sequential", type=int, default=10, help="one-at-a-time renders for the overhead")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    quick = ["--collect-seconds", "0"]
    setups = [
        ("serve, 1 process x 2 threads", "serve", ["--threads", "2"], False),
        ("serve, 1 process x 1 thread", "serve", ["--threads", "1"], True),
        ("fleet, 1 replica x 1 thread", "fleet", ["--threads", "1", "--min-replicas", "1", "--max-replicas", "1",
                                                  *quick], True),
        ("fleet, 2 replicas x 1 thread", "fleet", ["--threads", "1", "--min-replicas", "2", "--max-replicas", "2",
                                                   *quick], False),
    ]
    rows = {}
    with TemporaryDirectory() as tmp:
        for name, kind, extra, overhead in setups:
            print(f"... {name}", file=sys.stderr, flush=True)
            rows[name] = measure(kind, extra, args, Path(tmp), overhead)
    print(f"\nbundle {args.bundle.name}, {args.duration:g} s, {args.steps} steps, batches of {args.renders}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'setup':32} {'renders/min':>12} {'start -> first render s':>24} {'median latency s':>17}")
    for name, row in rows.items():
        latency = f"{row['latency']:.3f}" if "latency" in row else "-"
        print(f"{name:32} {row['rpm']:12.1f} {row['first']:24.1f} {latency:>17}")
    fleet, serve = rows["fleet, 1 replica x 1 thread"]["latency"], rows["serve, 1 process x 1 thread"]["latency"]
    print(f"ingress overhead per request (fleet 1x1 - serve 1 thread, medians of {args.sequential}): "
          f"{(fleet - serve) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
