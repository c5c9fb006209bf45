"""The studio's server helpers: /studio/config reports the body limit and names, /studio/check answers the
validator's own errors without rendering."""

from __future__ import annotations

import uuid

import pytest
from acestep_edge.runtime import vocab as rules
from acestep_edge.runtime.pipeline import Pipeline
from acestep_edge.runtime.request import RequestError, parse_request
from serverutil import DEMO_BUNDLE, LiveServer, task

pytestmark = pytest.mark.server

STUB = "data:audio/wav;base64,UklGRg=="
BAD = [
    {"steps": "abc"},
    {"duration": 5},
    {"inputs": {"audio": STUB}, "duration": None, "settings": {"task": "extract", "coverConditioningScale": 0.5}},
    {"inputs": {"audio": STUB}, "duration": None, "settings": {"task": "repaint", "repaintingStart": 5, "repaintingEnd": 4}},
    {"settings": {"trackName": "drums"}},
    {"inputs": {"audio": STUB}, "duration": None, "strength": 0.5,
     "settings": {"task": "repaint", "repaintingStart": 1, "repaintMode": "conservative"}},
    {"settings": {"bpm": 10}},
    {"positivePrompt": ""},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(Pipeline.load(DEMO_BUNDLE, threads=1), tmp_path_factory.mktemp("renders"),
                      max_body_bytes=3 * 2**20, api_key="k3y")
    yield live
    live.close()


AUTH = {"Authorization": "Bearer k3y"}


def test_config_reports_the_body_limit_and_the_validators_names(server):
    status, body, _ = server.request("GET", "/studio/config")
    assert status == 200
    assert body["maxBodyBytes"] == 3 * 2**20
    assert body["tasks"] == list(rules.TASKS) and body["trackNames"] == list(rules.TRACK_NAMES)
    assert body["windowTasks"] == list(rules.WINDOW_TASKS) and body["repaintModes"] == list(rules.REPAINT_MODES)
    status, _, _ = server.request("GET", "/v1/loras", headers=AUTH)
    assert body["adapters"] == (status == 200)  # the page asks for adapters only where the route exists


@pytest.mark.parametrize("change", BAD, ids=range(len(BAD)))
def test_check_answers_the_validators_error(server, change):
    data = {**task(str(uuid.uuid4())), **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(RequestError) as caught:
        parse_request(data)
    status, body, _ = server.request("POST", "/studio/check", {**data, "deliveryMethod": "async"}, AUTH)
    assert status == 200
    [error] = body["errors"]
    assert (error["parameter"], error["message"], error["code"]) == (
        caught.value.parameter, caught.value.message, caught.value.code)


def test_check_renders_nothing_and_needs_the_key(server):
    good = task(str(uuid.uuid4()))
    status, body, _ = server.request("POST", "/studio/check", good, AUTH)
    assert (status, body) == (200, {"errors": []})
    status, listing, _ = server.request("GET", "/v1/renders", headers=AUTH)
    assert good["taskUUID"] not in {job["taskUUID"] for job in listing["data"]}
    status, body, _ = server.request("POST", "/studio/check", good)
    assert status == 401 and body["errors"][0]["code"] == "missingApiKey"
    # A local path is refused as /v1 refuses it (this server has no --allow-dir).
    status, body, _ = server.request("POST", "/studio/check", {**good, "duration": None,
                                                                "inputs": {"audio": "/etc/passwd"}}, AUTH)
    assert body["errors"][0]["parameter"] == "inputs.audio" and body["errors"][0]["code"] == "invalidPath"
