"""The audio fields of a request: source audio references and the lossy-output `audioSettings`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .audio_io import LOSSY_FORMATS, LOSSY_SAMPLE_RATES, bitrate_limits
from .fields import choice_int, field_error, number, section
from .vocab import SAMPLE_RATE
from .wire import refuse_remote, show


@dataclass(frozen=True)
class AudioSettings:
    """Lossy-output encoding (MP3/OGG only); None = 48 kHz, stereo, format's default bitrate."""

    sample_rate: int | None = None
    bitrate: int | None = None  # kbps
    channels: int | None = None


def audio_settings(obj: Mapping, output_format: str) -> AudioSettings | None:
    raw = section(obj, "audioSettings", "audioSettings", ("sampleRate", "bitrate", "channels"))
    if not raw:
        return None
    if output_format not in LOSSY_FORMATS:
        raise field_error("audioSettings", f"applies to lossy formats only ({' and '.join(LOSSY_FORMATS)}); "
              f"remove it or set outputFormat to MP3 or OGG (got {output_format})",
              "conflictingParameters")
    channels = choice_int(raw, "channels", "audioSettings.channels", (1, 2))
    rate = choice_int(raw, "sampleRate", "audioSettings.sampleRate", LOSSY_SAMPLE_RATES)
    rate_used, channels_used = rate or SAMPLE_RATE, channels or 2
    lo, hi = bitrate_limits(output_format, rate_used, channels_used)
    context = f" kbps for {output_format} at {rate_used} Hz, {channels_used} channel(s)"
    bitrate = number(raw, "bitrate", "audioSettings.bitrate", lo, hi, integer=True,
                     context=context)
    return AudioSettings(sample_rate=rate, bitrate=bitrate, channels=channels)


def audio_source(v: Any, param: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise field_error(param, f"expected a local path, a file:// URI or a data URI "
              f"(data:audio/<type>;base64,...), got {show(v)}", "invalidType")
    refuse_remote(v, param)
    if v.startswith("data:") and ";base64," not in v[:100]:
        raise field_error(param, "data URIs must be base64: 'data:audio/<type>;base64,<data>'", "invalidFormat")
    return v
