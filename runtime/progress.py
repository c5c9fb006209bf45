"""Render progress on stderr, stage by stage: a bar per stage on a terminal, one plain line per stage otherwise."""

from __future__ import annotations

import sys
import time

MODES = ("auto", "bar", "plain", "none")
# Stage names the pipeline reports, as a person reads them.
LABELS = {"text_encoder": "text encoder", "condition_encoder": "condition encoder", "vae_encoder": "VAE encode",
          "audio_tokenizer": "audio tokenizer", "audio_detokenizer": "audio detokenizer", "dit": "DiT steps",
          "vae_decoder": "VAE decode", "write": "write"}
# Stages that repeat within one result (each result has its own DiT loop, decode and write); the
# encoders run once per request, however often conditioning calls them (null branch, cover switch).
PER_RESULT = ("dit", "vae_decoder", "write")
UNITS = {"dit": "step", "vae_decoder": "chunk", "vae_encoder": "window", "write": "file"}
_WIDTH = 30


class Progress:
    """Called as `progress(stage, done, total)`; `close()` ends the last bar. Mode auto: bar on a terminal."""

    def __init__(self, mode: str = "auto", label: str = "", stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        if mode not in MODES:
            raise ValueError(f"progress must be one of {', '.join(MODES)} (got {mode!r})")
        self.mode, self.label = mode, label
        self.stage: str | None = None
        self.seen: set[str] = set()
        self.started = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.mode == "none":
            return
        new = stage != self.stage and (stage in PER_RESULT or stage not in self.seen)
        if stage != self.stage and not new:  # an encoder run again: already shown
            return
        self.seen.add(stage)
        if new:
            self._end_bar()
            self.stage, self.started = stage, time.perf_counter()
        name = LABELS.get(stage, stage)
        prefix = f"{self.label}: " if self.label else ""
        if self.mode == "plain":
            if new:  # the line says what runs now, so a long stage is never silent
                unit = UNITS.get(stage, "part")
                count = f" ({total} {unit}{'s' if total != 1 else ''})" if total > 1 else ""
                self._write(f"{prefix}{name}{count}\n")
            return
        filled = _WIDTH * done // max(total, 1)
        elapsed = time.perf_counter() - self.started
        self._write(f"\r{prefix}{name:<17} [{'#' * filled}{'-' * (_WIDTH - filled)}] {done}/{total} {elapsed:5.1f} s")

    def _end_bar(self) -> None:
        if self.mode == "bar" and self.stage is not None:
            self._write("\n")

    def close(self) -> None:
        self._end_bar()
        self.stage = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
