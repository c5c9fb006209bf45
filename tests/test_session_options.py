"""Session options per graph: the DiT and the VAE decoder run without ONNX Runtime's memory pattern, on an arena
that grows by what is asked; the VAE decoder's session takes its share of the threads when windows run at once."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from acestep_edge import DEMO_BUNDLE
from acestep_edge.runtime.bundle import Bundle, SessionOptions, session_options


def test_long_sequence_graphs_have_no_memory_pattern_and_the_others_keep_it():
    bundle = Bundle(DEMO_BUNDLE, SessionOptions(threads=1))
    assert bundle.session("dit").get_session_options().enable_mem_pattern is False
    assert bundle.session("vae_decoder").get_session_options().enable_mem_pattern is False
    assert bundle.session("text_encoder").get_session_options().enable_mem_pattern is True
    for graph in ("dit", "vae_decoder"):
        so = session_options(ort, 3, graph)
        assert so.intra_op_num_threads == 3 and so.enable_mem_pattern is False
        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert so.get_session_config_entry("session.use_env_allocators") == "1"  # the kSameAsRequested arena
    other = session_options(ort, None, "vae_encoder")
    assert other.enable_mem_pattern is True
    with pytest.raises(RuntimeError, match="use_env_allocators"):  # not set: the session's own arena
        other.get_session_config_entry("session.use_env_allocators")


@pytest.mark.parametrize("threads, workers, want", [(4, None, 2), (4, 1, 4), (6, 3, 2), (1, None, 1), (2, 4, 1)])
def test_vae_decoder_threads_are_shared_by_the_windows_in_flight(threads, workers, want):
    bundle = Bundle(DEMO_BUNDLE, SessionOptions(threads=threads, vae_workers=workers))
    assert bundle.session("vae_decoder").get_session_options().intra_op_num_threads == want
    assert bundle.session("dit").get_session_options().intra_op_num_threads == threads
