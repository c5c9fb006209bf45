"""Test helpers for the fleet: one local Ray (127.0.0.1, 2 CPUs) per module, the app on it, a client, references."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import acestep_edge
from serverutil import LiveServer

REPO = Path(__file__).resolve().parent.parent
DEMO_BUNDLE = acestep_edge.DEMO_BUNDLE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FleetClient(LiveServer):
    """LiveServer's HTTP client (request, post, events) against the fleet's Serve proxy."""

    def __init__(self, port: int):
        self.port, self.base = port, f"http://127.0.0.1:{port}"

    def get_response(self, task_uuid: str):
        return self.post([{"taskType": "getResponse", "taskUUID": task_uuid}])

    def wait(self, task_uuid: str, timeout: float = 90.0, until=("success", "error")):
        """Poll getResponse until the task ends; (status, body)."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get_response(task_uuid)
            ended = "errors" in body or all(d.get("status") == "success" for d in body.get("data", []))
            if ended or time.monotonic() > deadline:
                return status, body
            time.sleep(0.2)

    def wait_running(self, task_uuid: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, body = self.get_response(task_uuid)
            if any(d.get("queueState") == "running" for d in body.get("data", [])):
                return
            time.sleep(0.1)
        raise AssertionError(f"{task_uuid} never started")


def start_ray():
    """A local Ray for this test process only, on loopback, small and quiet."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="WARNING",
             log_to_driver=False, _node_ip_address="127.0.0.1")
    return ray


def cli_render(request: dict, out: Path) -> bytes:
    """`acestep-edge generate` of one request at one thread (as the renderers run): the file's bytes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, whatever else is installed
    proc = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", "-", "--bundle", str(DEMO_BUNDLE),
                           "--out", str(out), "--threads", "1"], input=json.dumps(request), capture_output=True,
                          text=True, cwd=out.parent, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_bytes()


def renderer_replicas(app_name: str) -> int:
    from ray import serve

    status = serve.status().applications[app_name].deployments["renderer"]
    return status.replica_states.get("RUNNING", 0)


def write_adapter(folder: Path, seed: int, layer: int = 0) -> None:
    """A small PEFT LoRA folder for the demo DiT (seeded random factors on one attention projection)."""
    import numpy as np
    from lora_util import write_safetensors

    rng = np.random.default_rng(seed)
    key = f"base_model.model.layers.{layer}.self_attn.q_proj"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 4}))
    write_safetensors(folder / "adapter_model.safetensors", {f"{key}.lora_A.weight": rng.standard_normal((4, 64)) * 0.1,
                                                             f"{key}.lora_B.weight": rng.standard_normal((64, 4)) * 0.1})
