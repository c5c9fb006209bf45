"""What the HTTP server adds per request, and what keeping sessions warm saves, on the tiny bundle.

Interleaves, pair by pair: (a) the render in-process (Pipeline.generate_all + deliver), (b) the same
request POSTed to a running `acestep-edge serve` (sync, base64Data), (c) the same request through a
fresh `acestep-edge generate` process. Prints medians. Run from the repository root:

    python benchmarks/server_overhead.py [--pairs 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "acestep_edge" / "demo_bundle"


def request() -> dict:
    return {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "warm analog synth pop",
            "duration": 10, "steps": 8, "seed": 1, "outputFormat": "WAV", "outputType": "base64Data"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from acestep_edge.runtime.delivery import deliver
    from acestep_edge.runtime.pipeline import Pipeline
    from acestep_edge.runtime.request import parse_request

    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "acestep_edge.cli", "serve", "--bundle", str(BUNDLE), "--port", "0",
                               "--threads", "1", "--out-dir", tempfile.mkdtemp()], stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    for line in server.stderr:
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            break
    startup = time.perf_counter() - started
    threading.Thread(target=server.stderr.read, daemon=True).start()  # keep its log pipe drained
    port = int(match.group(1))
    pipeline = Pipeline.load(BUNDLE, threads=1)
    times: dict[str, list[float]] = {"in-process": [], "HTTP (warm server)": [], "CLI process": []}
    try:
        for _ in range(args.pairs + 1):  # the first round warms up and is dropped
            data = request()
            t = time.perf_counter()
            req = parse_request(data)
            [deliver(req, r) for r in pipeline.generate_all(req)]
            times["in-process"].append(time.perf_counter() - t)

            t = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", "/v1", json.dumps([request()]), {"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()
            times["HTTP (warm server)"].append(time.perf_counter() - t)

            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", "-", "--bundle", str(BUNDLE),
                            "--threads", "1"], input=json.dumps(request()), capture_output=True, check=True,
                           cwd=ROOT, text=True)
            times["CLI process"].append(time.perf_counter() - t)
    finally:
        server.terminate()
        server.wait(60)
    print(f"serve: {startup:.2f} s from start to listening (sessions created)")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values[1:]) * 1000:.0f} ms over {len(values) - 1}")


if __name__ == "__main__":
    main()
