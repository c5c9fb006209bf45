"""Deliver one rendered result: write or encode the audio, then build its Runware response object."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from .audio_io import encode_audio_bytes, write_audio, write_bytes_atomic
from .response import build_response, new_audio_uuid


def deliver(request, result, path: Path | None = None, *, audio_uuid: str | None = None,
            save_latents: str | None = None) -> dict:
    """The response for `result`; outputType URL writes the file atomically to `path` first.

    Shared by `acestep-edge generate` and the HTTP server, so both encode the same bytes.
    """
    audio_uuid = audio_uuid or new_audio_uuid()
    start = time.perf_counter()
    settings = request.audio_settings
    timings = dict(result.metadata["timings"])
    kwargs = dict(seed=result.seed, audio_uuid=audio_uuid, warnings=result.metadata["warnings"], timings=timings)
    if request.output_type == "URL":
        if path is None:
            raise ValueError("outputType URL needs the output file's path")
        kwargs["path"] = write_audio(path, result.audio, result.sample_rate, request.output_format, settings)
    else:
        kwargs["audio_bytes"] = encode_audio_bytes(result.audio, result.sample_rate, request.output_format, settings)
    if save_latents:
        buffer = io.BytesIO()
        np.save(buffer, result.latents.astype(np.float32))
        write_bytes_atomic(save_latents, buffer.getvalue())
    timings["write"] = time.perf_counter() - start
    response = build_response(request, **kwargs)
    response["providers"] = result.metadata["providers"]
    response["precisions"] = result.metadata.get("precisions", {})  # {graph: fp32|fp16|int8|int4}
    if result.metadata.get("int8_weights"):  # {graph: "s8 (stored u8; why)"}: the form chosen for this CPU
        response["int8Weights"] = result.metadata["int8_weights"]
    if result.metadata.get("adapters"):  # name, weight, format, rank, targets, triggerWords
        response["lora"] = result.metadata["adapters"]
    if "noise" in result.metadata:  # {source, seed, gpu, dtype}: what drew this result's initial noise
        response["noise"] = result.metadata["noise"]
    return response
