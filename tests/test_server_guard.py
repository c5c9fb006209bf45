"""The server's --allow-dir guard: client-named files outside it are refused before anything opens them."""

from __future__ import annotations

import base64
import os
import sys
import uuid

import numpy as np
import pytest
import soundfile as sf
from serverutil import DEMO_BUNDLE, LiveServer, pipeline  # noqa: F401 (pipeline: shared fixtures)

GUARD_CODES = ("invalidPath", "invalidFormat")


pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """allowed/ (the --allow-dir) with a real WAV and a symlink out; outside/ with files the client wants."""
    root = tmp_path_factory.mktemp("guard")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    audio = np.zeros((48000 * 10, 2), np.float32)
    sf.write(allowed / "ok.wav", audio, 48000)
    sf.write(outside / "secret.wav", audio, 48000)
    (allowed / "link.wav").symlink_to(outside / "secret.wav")
    os.mkfifo(outside / "fifo.wav")  # opening this for reading would block: a read shows as a hang
    return root, allowed, outside


@pytest.fixture(scope="module")
def server(pipeline, tree, tmp_path_factory):
    _, allowed, _ = tree
    live = LiveServer(pipeline, tmp_path_factory.mktemp("renders"), allow_dirs=(str(allowed),))
    yield live
    live.close()


def source_task(where: str, value: str) -> dict:
    data = {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "cover it",
            "steps": 1, "outputFormat": "WAV"}
    if where == "inputs.audio":
        data["inputs"] = {"audio": value}
    else:
        data.update(duration=10, settings={"referenceAudio": value})
    return data


@pytest.fixture
def opened(tree):
    """Every path under outside/ that this process opens while the test runs (Python-level opens)."""
    _, _, outside = tree
    seen: list[str] = []
    active = [True]

    def hook(event, args):
        if active[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if str(outside) in path or "/etc/passwd" in path:
                seen.append(path)

    sys.addaudithook(hook)  # audit hooks cannot be removed; this one switches itself off
    with open(outside / "secret.wav", "rb"):  # the hook sees opens (a check of the check)
        pass
    assert seen == [str(outside / "secret.wav")]
    seen.clear()
    yield seen
    active[0] = False


OUTSIDE_CASES = [
    ("absolute path outside", lambda r, a, o: str(o / "secret.wav")),
    ("/etc/passwd", lambda r, a, o: "/etc/passwd"),
    ("dot-dot traversal", lambda r, a, o: f"{a}/../outside/secret.wav"),
    ("symlink pointing out", lambda r, a, o: str(a / "link.wav")),
    ("file URI outside", lambda r, a, o: (o / "secret.wav").as_uri()),
    ("file URI with encoded dot-dot", lambda r, a, o: f"file://{a}/%2E%2E/outside/secret.wav"),
    ("fifo outside", lambda r, a, o: str(o / "fifo.wav")),
    ("relative path", lambda r, a, o: "secret.wav"),
    ("file URI with a host", lambda r, a, o: f"file://example.org{o}/secret.wav"),
    ("http URL", lambda r, a, o: "http://127.0.0.1:9/secret.wav"),
    ("https URL", lambda r, a, o: "https://example.org/secret.wav"),
    ("other scheme", lambda r, a, o: "smb://host/share/secret.wav"),
]


@pytest.mark.parametrize("where", ["inputs.audio", "settings.referenceAudio"])
@pytest.mark.parametrize("name,make", OUTSIDE_CASES, ids=[c[0] for c in OUTSIDE_CASES])
def test_paths_outside_allow_dir_are_refused_unread(server, tree, opened, where, name, make):
    value = make(*tree)
    status, body = server.post([source_task(where, value)])
    assert status == 400, body
    (err,) = body["errors"]
    assert err["parameter"] == where and err["code"] in GUARD_CODES, err
    # The guard's own wording (the runtime's parser would name other things) and how to fix it.
    assert "data URI" in err["message"], err["message"]
    if err["code"] == "invalidPath" and "relative" not in err["message"]:
        assert "outside the folders this server may read" in err["message"]
    assert opened == [], opened


@pytest.mark.parametrize("where", ["inputs.audio", "settings.referenceAudio"])
def test_paths_inside_allow_dir_reach_the_runtime(server, tree, where):
    """Inside the allow-dir the guard steps aside: whatever answers now is the runtime, not the guard."""
    _, allowed, _ = tree
    for value in (str(allowed / "ok.wav"), (allowed / "ok.wav").as_uri(), f"{allowed}/sub/../ok.wav"):
        status, body = server.post([source_task(where, value)])
        codes = [e["code"] for e in body.get("errors", [])]
        assert "invalidPath" not in codes, body


def test_data_uris_pass_the_guard(server, tree):
    _, allowed, _ = tree
    uri = "data:audio/wav;base64," + base64.b64encode((allowed / "ok.wav").read_bytes()).decode()
    status, body = server.post([source_task("inputs.audio", uri)])
    assert "invalidPath" not in [e["code"] for e in body.get("errors", [])], body


def test_without_allow_dir_no_path_is_read(pipeline, tree, tmp_path, opened):
    _, allowed, _ = tree
    live = LiveServer(pipeline, tmp_path)
    try:
        status, body = live.post([source_task("inputs.audio", str(allowed / "ok.wav"))])
        (err,) = body["errors"]
        assert status == 400 and err["code"] == "invalidPath" and "--allow-dir" in err["message"]
    finally:
        live.close()
