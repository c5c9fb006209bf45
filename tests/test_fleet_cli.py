"""`acestep-edge fleet` as a user runs it: the config files it writes, and the command itself (its own
local Ray) from start to a render, then SIGTERM: queued work refused, the running render delivered, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml

from fleetutil import DEMO_BUNDLE, REPO, FleetClient, free_port

pytestmark = pytest.mark.fleet


def fleet_cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **kwargs.pop("env", {})}
    return [sys.executable, "-m", "acestep_edge.cli", "fleet", *args], env


def test_config_file_is_what_serve_deploy_accepts(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    command, env = fleet_cli("config", "--bundle", str(DEMO_BUNDLE), "--out-dir", str(tmp_path / "out"),
                             "--min-replicas", "2", "--max-replicas", "5", "--threads", "2", "--host", "0.0.0.0",
                             "--api-key", "sekrit", "-o", str(tmp_path / "fleet.yaml"))
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "fleet.yaml").read_text()
    assert "sekrit" not in text  # the key travels in the environment, never in a file
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    app = schema.applications[0]
    assert app.import_path == "acestep_edge.fleet.app:build" and schema.http_options.host == "0.0.0.0"
    renderer = {d.name: d for d in app.deployments}["renderer"]
    assert renderer.max_ongoing_requests == 1 and renderer.ray_actor_options.num_cpus == 2
    assert (renderer.autoscaling_config["min_replicas"], renderer.autoscaling_config["max_replicas"]) == (2, 5)
    assert app.args["bundle"] == str(DEMO_BUNDLE.resolve()) and app.args["out_dir"] == str(tmp_path / "out")

    from acestep_edge.fleet.app import build  # the builder `serve deploy` calls takes those args
    bound = build(app.args)
    assert type(bound).__name__ == "Application"
    with pytest.raises(ValueError, match="unknown fleet argument 'replicas'"):
        build({**app.args, "replicas": 3})

    command, env = fleet_cli("config", "--bundle", str(DEMO_BUNDLE), "--provider", "cuda", "--format", "rayservice")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    service = yaml.safe_load(proc.stdout)
    assert service["kind"] == "RayService"
    inner = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    renderer = {d.name: d for d in inner.applications[0].deployments}["renderer"]
    assert renderer.ray_actor_options.num_gpus == 1.0
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_fleet_command_renders_then_drains_on_sigterm(tmp_path):
    port = free_port()
    command, env = fleet_cli("--bundle", str(DEMO_BUNDLE), "--port", str(port), "--out-dir", str(tmp_path / "out"),
                             "--min-replicas", "1", "--max-replicas", "1", "--collect-seconds", "1",
                             env={"ACESTEP_EDGE_TEST_STEP_DELAY": "0.3"})
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=tmp_path)
    lines: list[str] = []

    def pump() -> None:  # read everything, so the pipe never fills and blocks the command
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def wait_line(text: str, limit: float) -> None:
        deadline = time.monotonic() + limit
        while not any(text in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.1)

    try:
        wait_line("ready at", 180)
        client = FleetClient(port)
        task = {"taskType": "audioInference", "positivePrompt": "cli", "duration": 10, "steps": 2, "seed": 1,
                "outputFormat": "WAV"}
        status, body = client.post([{**task, "taskUUID": str(uuid.uuid4())}])
        assert status == 200 and body["data"][0]["audioURL"].startswith(client.base), body
        wait_line("first render delivered", 10)  # the start-up report: Ray, the replicas, one render

        running, queued = str(uuid.uuid4()), str(uuid.uuid4())
        client.post([{**task, "taskUUID": running, "steps": 10, "deliveryMethod": "async"}])
        client.wait_running(running)
        client.post([{**task, "taskUUID": queued, "deliveryMethod": "async"}])
        proc.send_signal(signal.SIGTERM)
        status, body = client.wait(queued, timeout=20)
        assert body["errors"][0]["code"] == "serviceUnavailable", body  # refused, retryable
        status, body = client.post([{**task, "taskUUID": str(uuid.uuid4())}])
        assert status == 503, body
        status, body = client.wait(running, timeout=30)
        assert status == 200 and body["data"][0]["status"] == "success", body  # the running render finished
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:  # a failure above: let it drain and stop its Ray, then insist
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        reader.join(30)
    assert "acestep-edge fleet: stopped\n" in lines, "".join(lines)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(names) == 2 and not [n for n in names if n.endswith(".part")], names
