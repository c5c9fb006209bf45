"""The runtime never imports torch: importing it and rendering the demo bundle leaves torch unloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import acestep_edge

DEMO_BUNDLE = acestep_edge.DEMO_BUNDLE

SCRIPT = r"""
import json, sys
import acestep_edge.runtime.request, acestep_edge.runtime.sampler, acestep_edge.runtime.prompts
import acestep_edge.runtime.audio_io, acestep_edge.runtime.response, acestep_edge.runtime.bundle
import acestep_edge.runtime.pipeline, acestep_edge.runtime.cli, acestep_edge.cli
from acestep_edge.runtime.pipeline import Pipeline
request = json.loads(open(sys.argv[1]).read())
request.update(duration=10, steps=2, outputFormat="WAV")
if sys.argv[2] != "-":
    result = Pipeline.load(sys.argv[2]).generate(request)
    assert result.audio.shape == (2, 480000), result.audio.shape
print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
"""


@pytest.mark.parametrize("render", [False, True], ids=["import", "render"])
def test_runtime_does_not_load_torch(render):
    if render and not (DEMO_BUNDLE / "manifest.json").exists():
        pytest.fail("the committed demo bundle is missing; regenerate it (see export/demo_bundle.py)")
    request = Path(acestep_edge.__file__).parent / "demo_request.json"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(request), str(DEMO_BUNDLE) if render else "-"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
