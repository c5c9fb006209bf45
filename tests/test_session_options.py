"""Session options per graph: the DiT runs without ONNX Runtime's memory pattern, on an arena that grows by what is asked."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from acestep_edge import DEMO_BUNDLE
from acestep_edge.runtime.bundle import Bundle, SessionOptions, session_options


def test_dit_session_has_no_memory_pattern_and_the_others_keep_it():
    bundle = Bundle(DEMO_BUNDLE, SessionOptions(threads=1))
    assert bundle.session("dit").get_session_options().enable_mem_pattern is False
    assert bundle.session("vae_decoder").get_session_options().enable_mem_pattern is True
    so = session_options(ort, 3, "dit")
    assert so.intra_op_num_threads == 3 and so.enable_mem_pattern is False
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.get_session_config_entry("session.use_env_allocators") == "1"  # the kSameAsRequested arena
    other = session_options(ort, None, "vae_decoder")
    assert other.enable_mem_pattern is True
    with pytest.raises(RuntimeError, match="use_env_allocators"):  # not set: the session's own arena
        other.get_session_config_entry("session.use_env_allocators")
