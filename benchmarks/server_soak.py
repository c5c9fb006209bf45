"""Soak `acestep-edge serve`: N sync renders over REST and WebSocket, the server's RSS sampled as they go.

    python benchmarks/server_soak.py --renders 200 --steps 8 --duration 10 --json out.json

Starts the server on the demo bundle (or --bundle) in a subprocess on a free loopback port, alternates
REST and WebSocket clients and output types, and prints RSS (VmRSS of the server process) at the start
(after the first render) and every 20 renders. Timings on a shared machine are not speed figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import acestep_edge

DEMO = Path(acestep_edge.__file__).parent / "demo_bundle"


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(DEMO))
    ap.add_argument("--renders", type=int, default=200)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from websockets.sync.client import connect

    out = tempfile.mkdtemp(prefix="soak-")
    proc = subprocess.Popen([sys.executable, "-m", "acestep_edge.cli", "serve", "--bundle", args.bundle, "--port",
                             "0", "--threads", "1", "--out-dir", out], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            break
    port = int(match.group(1))
    samples, kinds = [], {"rest": 0, "websocket": 0}
    sock = connect(f"ws://127.0.0.1:{port}/v1", max_size=None).__enter__()  # closed in `finally`
    sock.send(json.dumps([{"taskType": "authentication", "apiKey": "soak"}]))
    sock.recv()
    start = time.monotonic()
    try:
        for i in range(args.renders):
            task = {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "soak",
                    "duration": args.duration, "steps": args.steps, "seed": i,
                    "outputType": ("URL", "base64Data", "dataURI")[i % 3], "outputFormat": ("WAV", "MP3")[i % 2]}
            if i % 2:
                sock.send(json.dumps([task]))
                while "audioUUID" not in (frame := sock.recv(timeout=300)):
                    assert "errors" not in frame, frame
                kinds["websocket"] += 1
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                conn.request("POST", "/v1", json.dumps([task]), {"Content-Type": "application/json"})
                response = conn.getresponse()
                assert response.status == 200, response.read()[:300]
                response.read()
                conn.close()
                kinds["rest"] += 1
            if i == 0 or (i + 1) % 20 == 0:
                samples.append({"renders": i + 1, "rss_mb": round(rss_mb(proc.pid), 1),
                                "seconds": round(time.monotonic() - start, 1)})
                print(samples[-1], flush=True)
    finally:
        sock.close()
        proc.terminate()
        proc.wait(60)
    result = {"renders": args.renders, "steps": args.steps, "duration": args.duration, "clients": kinds,
              "rss_start_mb": samples[0]["rss_mb"], "rss_end_mb": samples[-1]["rss_mb"], "samples": samples}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
