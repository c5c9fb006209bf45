"""`acestep-edge fleet` on a real local Ray (127.0.0.1): the server's wire format from renderer replicas.

One Ray cluster and one deployment serve the whole module (start-up is the slow part); the tests run
in file order: autoscaling 1 → 2 first, then everything else on two CPU renderer replicas.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from fleetutil import DEMO_BUNDLE, FleetClient, cli_render, free_port, renderer_replicas, start_ray, write_adapter

pytestmark = pytest.mark.fleet

STEP_DELAY = 0.4  # seconds per render step (the tiny bundle renders in ~0.2 s; real ones take minutes)
APP = "acestep-edge-test"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    ray = start_ray()
    from ray import serve

    from acestep_edge.fleet.app import FleetConfig, build_app
    from acestep_edge.fleet.registry_actor import kill_registry, registry, registry_name

    out = tmp_path_factory.mktemp("fleet-out")
    loras = tmp_path_factory.mktemp("loras")
    write_adapter(loras / "style", seed=1)
    write_adapter(loras / "alt", seed=2, layer=1)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = FleetConfig(bundle=str(DEMO_BUNDLE), out_dir=str(out), min_replicas=1, max_replicas=2,
                             upscale_delay_s=0.5, downscale_delay_s=3600, metrics_interval_s=0.5,
                             look_back_period_s=1.0, step_delay=STEP_DELAY, app_name=APP, lora_dir=str(loras),
                             server={"bundle_info": {"name": "demo_bundle"}})
        serve.run(build_app(config), name=APP, route_prefix="/")
        client = FleetClient(port)
        client.out = out
        client.registry = registry(registry_name(APP))
        client.ray = ray
        yield client
    finally:
        serve.shutdown()
        kill_registry(registry_name(APP))
        ray.shutdown()


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """`acestep-edge generate` bytes of the requests the fleet renders, by seed (steps as the tests send)."""
    folder = tmp_path_factory.mktemp("cli")
    return {(seed, steps): cli_render(task(str(uuid.uuid4()), seed=seed, steps=steps), folder / f"{seed}-{steps}.wav")
            for seed, steps in [(11, 2), (12, 2), (13, 2), (14, 2), (21, 10)]}


def task(task_uuid: str, **overrides) -> dict:
    data = {"taskType": "audioInference", "taskUUID": task_uuid, "positivePrompt": "a short test",
            "duration": 10, "steps": 2, "seed": 3, "outputFormat": "WAV"}
    data.update(overrides)
    return data


def audio(fleet: FleetClient, result: dict) -> bytes:
    assert result["audioURL"].startswith(fleet.base + "/audio/"), result["audioURL"]
    status, body, _ = fleet.request("GET", result["audioURL"].removeprefix(fleet.base))
    assert status == 200, body
    return body


def submit_async(fleet: FleetClient, **overrides) -> str:
    task_uuid = str(uuid.uuid4())
    status, body = fleet.post([task(task_uuid, deliveryMethod="async", **overrides)])
    assert status == 200 and body["data"][0]["status"] == "processing", body
    return task_uuid


def record(fleet: FleetClient, task_uuid: str) -> dict:
    return fleet.ray.get(fleet.registry.snapshot.remote(task_uuid))


# -- autoscaling ------------------------------------------------------------------------------------

def test_autoscales_from_one_to_two_renderers_under_a_queue(fleet):
    assert renderer_replicas(APP) == 1
    uuids = [submit_async(fleet, steps=8, seed=30 + i) for i in range(6)]  # ~3.5 s each: a queue of 5
    deadline = time.monotonic() + 90
    while renderer_replicas(APP) < 2:
        assert time.monotonic() < deadline, "the renderer deployment never scaled to 2 replicas"
        time.sleep(0.2)
    for task_uuid in uuids:
        status, body = fleet.wait(task_uuid)
        assert status == 200 and body["data"][0]["status"] == "success", body
    replicas = {record(fleet, u)["replica"] for u in uuids}
    assert len(replicas) == 2, f"all six renders ran on {replicas}: the second replica took none"


# -- the wire format through the ingress -----------------------------------------------------------

def test_eight_concurrent_requests_match_the_cli(fleet, references):
    assert renderer_replicas(APP) == 2
    seeds = [11, 12, 13, 14] * 2
    uuids = [str(uuid.uuid4()) for _ in seeds]
    answers: dict[int, tuple] = {}

    def client(i):
        answers[i] = fleet.post([task(uuids[i], seed=seeds[i])])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(answers) == list(range(8))
    for i, (status, body) in answers.items():
        assert status == 200, body
        assert [d["taskUUID"] for d in body["data"]] == [uuids[i]], body  # its own, exactly once
        assert audio(fleet, body["data"][0]) == references[(seeds[i], 2)], f"request {i} differs from the CLI"
    renders = [record(fleet, u)["renders"] for u in uuids]
    assert renders == [1] * 8, renders  # none rendered twice
    assert not list(fleet.out.glob(".*.part"))


def test_async_get_response_sse_and_another_ingress(fleet, references):
    task_uuid = submit_async(fleet, seed=11)
    events = [name for name, _ in fleet.events(task_uuid)]
    assert events[0] == "queued" and events[-1] == "done" and "started" in events, events
    status, body = fleet.wait(task_uuid)
    assert status == 200 and body["data"][0]["status"] == "success", body
    assert audio(fleet, body["data"][0]) == references[(11, 2)]

    # Another ingress replica (a fresh FleetRenderer here, on the same registry) knows the task too.
    from acestep_edge.fleet.ingress import FleetRenderer
    from acestep_edge.fleet.registry_actor import registry_name
    from acestep_edge.server.tasks import Tasks

    other = FleetRenderer(None, None, fleet.out, registry_name=registry_name(APP))
    reply = Tasks(other, None).get_response({"taskType": "getResponse", "taskUUID": task_uuid})
    assert [d["audioURL"] for d in reply.data] == [body["data"][0]["audioURL"]], reply
    missing = Tasks(other, None).get_response({"taskType": "getResponse", "taskUUID": str(uuid.uuid4())})
    assert missing.errors[0]["code"] == "taskNotFound"
    status, body = fleet.post([task(task_uuid)])  # the same taskUUID again: refused across the fleet
    assert status == 409 and body["errors"][0]["code"] == "conflictTaskUUID", body


def test_websocket_protocol_through_the_proxy(fleet, references):
    import json

    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{fleet.port}/v1") as sock:
        sock.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert json.loads(sock.recv(timeout=30)) == {"data": [{"taskType": "ping", "pong": True}]}
        sync = task(str(uuid.uuid4()), numberResults=2, seed=11)
        sock.send(json.dumps([sync]))
        results = []
        deadline = time.monotonic() + 90
        while len(results) < 2:
            frame = json.loads(sock.recv(timeout=max(0.1, deadline - time.monotonic())))
            assert "errors" not in frame, frame
            results += [x for x in frame["data"] if "audioUUID" in x]
    assert [r["seed"] for r in results] == [11, 12] and [r["resultIndex"] for r in results] == [0, 1]
    assert audio(fleet, results[0]) == references[(11, 2)]  # result 0 of the pair is seed 11's render


def test_validation_errors_are_the_servers(fleet):
    status, body, headers = fleet.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")  # the studio page
    status, body, _ = fleet.request("GET", "/health")
    assert status == 200 and body["providers"]["dit"] == ["CPUExecutionProvider"], body  # a renderer's sessions
    assert body["fleet"]["maxReplicas"] == 2 and body["queue"]["capacity"] == 16, body
    status, body = fleet.post([task(str(uuid.uuid4()), steps=0)])
    assert status == 400 and body["errors"][0]["parameter"] == "steps", body
    status, body = fleet.post([task(str(uuid.uuid4()), routing={})])
    assert status == 400 and body["errors"][0]["parameter"] == "routing", body


# -- cancel ---------------------------------------------------------------------------------------

def test_cancel_a_queued_and_a_running_task(fleet):
    files_before = set(fleet.out.iterdir())
    first, second = submit_async(fleet, steps=30), submit_async(fleet, steps=30)  # 12 s each: both replicas
    fleet.wait_running(first)
    fleet.wait_running(second)
    queued = submit_async(fleet, steps=30)
    assert record(fleet, queued)["state"] == "queued"
    status, body, _ = fleet.request("DELETE", f"/v1/tasks/{queued}")
    assert status == 200 and body["data"][0]["status"] == "cancelled", body
    status, body = fleet.get_response(queued)
    assert status == 409 and body["errors"][0]["code"] == "taskCancelled", body

    started = time.monotonic()
    status, body, _ = fleet.request("DELETE", f"/v1/tasks/{first}")
    assert status == 200, body
    status, body = fleet.wait(first, timeout=10)
    assert body["errors"][0]["code"] == "taskCancelled", body
    assert time.monotonic() - started < 5, "the rendering replica did not stop at its next step"
    assert record(fleet, first)["progress"]["step"] < 30  # stopped mid-render, on its replica
    fleet.request("DELETE", f"/v1/tasks/{second}")
    fleet.wait(second, timeout=10)
    assert record(fleet, queued)["renders"] == 0  # never reached a replica
    assert set(fleet.out.iterdir()) == files_before  # nothing written by any of the three


# -- adapters -------------------------------------------------------------------------------------

def test_same_adapter_set_goes_to_the_replica_holding_it(fleet):
    placed: dict[str, set] = {"style": set(), "alt": set()}
    for name in ["style", "alt"] * 4:
        task_uuid = str(uuid.uuid4())
        status, body = fleet.post([task(task_uuid, lora=[{"model": name, "weight": 0.8}])])
        assert status == 200 and body["data"][0]["lora"][0]["model"] == name, body
        placed[name].add(record(fleet, task_uuid)["replica"])
    assert all(len(replicas) == 1 for replicas in placed.values()), placed  # no switch on a second replica
    status, body = fleet.post([task(str(uuid.uuid4()), lora=[{"model": "nope"}])])
    assert status == 400 and body["errors"][0]["parameter"] == "lora[0].model", body  # refused at the ingress


# -- faults ---------------------------------------------------------------------------------------

def test_killed_replica_mid_render_gives_one_response(fleet, references):
    ray = fleet.ray
    victim = submit_async(fleet, seed=21, steps=10)  # ~4 s
    fleet.wait_running(victim)
    others = [submit_async(fleet, seed=s) for s in (11, 12, 13)]  # one renders beside it, two wait
    replica = record(fleet, victim)["replica"]
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if replica in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)

    status, body = fleet.wait(victim)
    final = record(fleet, victim)
    print("killed replica: the task", "failed" if "errors" in body else "completed on another replica")
    if "errors" in body:  # allowed: a Runware error, nothing delivered
        assert body["errors"][0]["code"] == "serviceUnavailable" and final["results"] == [], body
    else:
        assert [d["taskUUID"] for d in body["data"]] == [victim], body  # exactly one result
        assert final["attempt"] == 2 and final["replica"] != replica, final  # finished on another replica
        assert audio(fleet, body["data"][0]) == references[(21, 10)]
    for task_uuid, seed in zip(others, (11, 12, 13)):  # nothing queued was lost
        status, body = fleet.wait(task_uuid)
        assert status == 200 and body["data"][0]["status"] == "success", body
        assert audio(fleet, body["data"][0]) == references[(seed, 2)]
    # Every file on disk was delivered: no partial file, nothing of the killed attempt.
    served = set(ray.get(fleet.registry.served_names.remote()))
    on_disk = {p.name for p in fleet.out.iterdir()}
    assert on_disk == served, on_disk ^ served


def test_killed_ingress_replica_loses_no_queued_task(fleet):
    ray = fleet.ray
    uuids = [submit_async(fleet, steps=6, seed=50 + i) for i in range(4)]  # two render, two wait in its queue
    fleet.wait_running(uuids[0])
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{APP}#ingress#" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
    deadline = time.monotonic() + 120
    pending = set(uuids)
    while pending:  # Serve starts a new ingress replica; until then the proxy has none to answer
        assert time.monotonic() < deadline, {u: record(fleet, u)["state"] for u in pending}
        for task_uuid in list(pending):
            try:
                status, body = fleet.get_response(task_uuid)
            except (OSError, ValueError):
                continue
            if status == 200 and body.get("data") and body["data"][0].get("status") == "success":
                pending.discard(task_uuid)
        time.sleep(0.5)
    assert [record(fleet, u)["renders"] for u in uuids] == [1, 1, 1, 1]  # each rendered once
    adopted = [u for u in uuids if record(fleet, u)["owner"] != names[0]["name"]]
    assert adopted, "no task was taken over by the new ingress replica"  # those waiting in the dead one's queue


# -- drain (what SIGTERM starts in `acestep-edge fleet`) -------------------------------------------

def test_drain_refuses_queued_and_new_work_and_finishes_running(fleet):
    deadline = time.monotonic() + 60
    while renderer_replicas(APP) < 2:  # the killed replica's replacement
        assert time.monotonic() < deadline
        time.sleep(0.2)
    running = [submit_async(fleet, steps=5, seed=40 + i) for i in range(2)]
    for task_uuid in running:
        fleet.wait_running(task_uuid)
    queued = submit_async(fleet, steps=5)
    fleet.ray.get(fleet.registry.begin_drain.remote(30.0))
    status, body = fleet.wait(queued, timeout=10)
    assert body["errors"][0]["code"] == "serviceUnavailable", body
    for task_uuid in running:
        status, body = fleet.wait(task_uuid)
        assert status == 200 and body["data"][0]["status"] == "success", body
    status, body = fleet.post([task(str(uuid.uuid4()))])
    assert status == 503 and body["errors"][0]["code"] == "serviceUnavailable", body
