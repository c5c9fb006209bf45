"""Runware `audioInference` request: parse and validate JSON into frozen dataclasses."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from acestep_edge.runtime import noise
from acestep_edge.runtime.audio_io import (
    FORMATS,
    LOSSY_FORMATS,
    LOSSY_SAMPLE_RATES,
    MODEL_SAMPLE_RATE,
    bitrate_limits,
)

TASK_TYPE = "audioInference"
MODEL_ID = "runware:ace-step@v1.5-xl-base"
OUTPUT_TYPES = ("URL", "base64Data", "dataURI")
GUIDANCE_TYPES = ("apg", "cfg", "adg")
TASKS = ("text2music", "cover", "repaint", "extract", "lego", "complete")
SOURCE_TASKS = ("cover", "repaint", "extract", "lego", "complete")
TRACK_NAMES = ("woodwinds", "brass", "fx", "synth", "strings", "percussion", "keyboard",
               "guitar", "bass", "drums", "backing_vocals", "vocals")
# ACE-Step's acestep/constants.py VALID_LANGUAGES (ISO 639-1, plus 'yue' and 'unknown').
VALID_LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en",
    "es", "fa", "fi", "fr", "he", "hi", "hr", "ht", "hu", "id",
    "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no",
    "pa", "pl", "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw",
    "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)
TIME_SIGNATURES = {"2": 2, "3": 3, "4": 4, "6": 6, "2/4": 2, "3/4": 3, "4/4": 4, "6/8": 6}
DURATION_RANGE = (10.0, 600.0)
DEFAULT_DURATION = 60.0  # diffusers' default; the official code draws a random 10–120 s instead
STEPS_RANGE, DEFAULT_STEPS = (1, 200), 50
CFG_RANGE, DEFAULT_CFG = (1.0, 30.0), 7.0
NUMBER_RESULTS_RANGE = (1, 16)
SEED_RANGE = (0, 2**63 - 1)
BPM_RANGE = (30, 300)
MAX_PROMPT_CHARS = 3000
# Characters only: the 2048-token lyric cap (SPEC §4.2) is applied by the tokenizer later.
MAX_LYRICS_CHARS = 10_000
MAX_SHIFT = 100.0
# Runware platform options that mean nothing offline: accepted and reported in warnings.
IGNORED_PLATFORM_OPTIONS = ("includeCost", "ttl", "deliveryMethod")

_KEYSCALE = re.compile(r"^\s*([A-G])\s*(#|b|♯|♭)?\s+(major|minor)\s*$", re.IGNORECASE)
_SETTINGS_KEYS = (
    "lyrics", "bpm", "keyScale", "timeSignature", "vocalLanguage", "guidanceType",
    "cfgIntervalStart", "cfgIntervalEnd", "coverConditioningScale", "repaintingStart",
    "repaintingEnd", "shift", "task", "trackName", "trackClasses", "useNegativePrompt",
    "referenceAudio", "repaintMode", "noise", "noiseGpu",
)
# Repaint preservation modes (official generate_music._resolve_repaint_config); strength acts in
# balanced mode only.
REPAINT_MODES = ("balanced", "conservative", "aggressive")
# Tasks that take a repaint window, and those where `strength` acts.
WINDOW_TASKS = ("repaint", "lego")
_TOP_KEYS = (
    "taskType", "taskUUID", "model", "positivePrompt", "negativePrompt", "duration", "seed",
    "steps", "CFGScale", "numberResults", "outputType", "outputFormat", "audioSettings",
    "inputs", "strength", "settings",
)


class RequestError(ValueError):
    """A request field is missing or invalid; `message` says which value to send instead."""

    def __init__(self, parameter: str | None, message: str, code: str = "invalidParameter",
                 task_uuid: str | None = None, task_type: str | None = TASK_TYPE):
        super().__init__(message)
        self.parameter = parameter
        self.message = message
        self.code = code
        self.task_uuid = task_uuid
        self.task_type = task_type


@dataclass(frozen=True)
class AudioSettings:
    """Lossy-output encoding (MP3/OGG only); None = 48 kHz, stereo, format's default bitrate."""

    sample_rate: int | None = None
    bitrate: int | None = None  # kbps
    channels: int | None = None


@dataclass(frozen=True)
class Settings:
    """`settings` of the request; the last block holds this runtime's local extensions."""

    lyrics: str = ""
    bpm: int | None = None
    key_scale: str | None = None  # canonical, e.g. "F# minor"
    time_signature: int | None = None  # 2, 3, 4 or 6 (2/4, 3/4, 4/4, 6/8)
    vocal_language: str = "en"  # the official HTTP API default
    guidance_type: str = "apg"
    cfg_interval_start: float = 0.0  # fraction of sampling progress p = 1 − t
    cfg_interval_end: float = 1.0
    cover_conditioning_scale: float | None = None
    repainting_start: float | None = None  # seconds
    repainting_end: float | None = None  # seconds; -1 = end of the source
    # Local extensions.
    shift: float | None = None  # None = bundle default (3.0)
    task: str = "text2music"
    track_name: str | None = None  # extract / lego
    track_classes: tuple[str, ...] = ()  # complete
    use_negative_prompt: bool = False
    reference_audio: str | None = None  # timbre reference: path, file:// URI or data URI
    repaint_mode: str = "balanced"  # repaint / lego windows: balanced, conservative, aggressive
    noise: str | None = None  # initial-noise source (runtime/noise.py); None = the pipeline's default
    noise_gpu: str | None = None  # torch-cuda's GPU: preset name or "SMSxTHREADS"; None = default


@dataclass(frozen=True)
class Request:
    task_type: str
    task_uuid: str
    model: str
    positive_prompt: str
    negative_prompt: str | None
    duration: float | None  # None when the source audio sets the length
    seed: int | None  # None: the caller draws one and reports it
    steps: int
    cfg_scale: float
    number_results: int
    output_type: str
    output_format: str
    audio_settings: AudioSettings | None
    input_audio: str | None  # inputs.audio as given
    strength: float | None
    settings: Settings
    warnings: tuple[str, ...] = ()

    @property
    def latent_frames(self) -> int:
        if self.duration is None:
            raise ValueError("duration comes from the source audio; call latent_frames_for(seconds)")
        return latent_frames_for(self.duration)


def latent_frames_for(duration: float) -> int:
    """Latent length T for a duration in seconds (SPEC §4.3; 1920 samples per frame at 48 kHz)."""
    return max(128, int(round(duration, 1) * MODEL_SAMPLE_RATE) // 1920)


# ----------------------------------------------------------------------------- field readers


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _err(param: str, message: str, code: str = "invalidParameter") -> RequestError:
    return RequestError(param, f"{param}: {message}", code)


def _is_number(v: Any) -> bool:
    # An int is finite however long (math.isfinite would overflow converting a 309-digit one to float).
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))


def _is_integral(v: Any) -> bool:
    # Compare without a float round trip: int(2**63 - 1) is not representable as a float.
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _number(obj: Mapping, key: str, param: str, lo: float, hi: float, default: Any = None,
            *, integer: bool = False, lo_open: bool = False, context: str = "") -> Any:
    if obj.get(key) is None:
        return default
    v = obj[key]
    kind = "an integer" if integer else "a number"
    a, b = (int(lo), int(hi)) if integer else (f"{lo:g}", f"{hi:g}")
    bound = (f"greater than {a} and at most {b}" if lo_open else f"from {a} to {b}") + context
    if not _is_number(v) or (integer and not _is_integral(v)):
        raise _err(param, f"expected {kind} {bound}, got {_show(v)}", "invalidType")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise _err(param, f"{_show(v)} is out of range; use {kind} {bound}", "valueOutOfRange")
    return int(v) if integer else float(v)


def _string(obj: Mapping, key: str, param: str, *, max_chars: int, required: bool = False,
            allow_empty: bool = True) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise _err(param, f"is required; send a non-empty string of at most {max_chars} characters",
                  "missingParameter")
        return None
    if not isinstance(v, str):
        raise _err(param, f"expected a string of at most {max_chars} characters, got {_show(v)}",
              "invalidType")
    if not allow_empty and not v.strip():
        raise _err(param, f"must not be empty; send 1 to {max_chars} characters", "valueOutOfRange")
    if len(v) > max_chars:
        raise _err(param, f"is {len(v)} characters long; the limit is {max_chars}", "valueOutOfRange")
    return v


def _choice(obj: Mapping, key: str, param: str, allowed: tuple[str, ...], default: Any = None
            ) -> Any:
    if obj.get(key) is None:
        return default
    v = obj[key]
    match = [a for a in allowed if isinstance(v, str) and a.lower() == v.strip().lower()]
    if not match:
        raise _err(param, f"{_show(v)} is not allowed; use one of {', '.join(allowed)}", "invalidEnum")
    return match[0]


def _object(obj: Mapping, key: str, param: str, allowed_keys: tuple[str, ...]) -> Mapping:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _err(param, f"expected an object, got {_show(v)}", "invalidType")
    _reject_unknown(v, allowed_keys, prefix=f"{param}.")
    return v


def _reject_unknown(obj: Mapping, allowed: tuple[str, ...], prefix: str = "") -> None:
    for key in obj:
        if key not in allowed:
            raise _err(f"{prefix}{key}", f"unknown parameter; allowed here: {', '.join(allowed)}",
                  "unknownParameter")


# ----------------------------------------------------------------------------- sections


def _task_uuid(obj: Mapping) -> str:
    v = obj.get("taskUUID")
    how = "send a UUID v4 string such as '63675dd8-9c96-4d90-9eea-e239ce58d438'"
    if v is None:
        raise _err("taskUUID", f"is required; {how}", "missingParameter")
    try:
        if isinstance(v, str) and len(v.strip()) == 36:
            return str(uuid.UUID(v))
    except ValueError:
        pass
    raise _err("taskUUID", f"{_show(v)} is not a UUID; {how}", "invalidFormat")


def _key_scale(settings: Mapping) -> str | None:
    v = settings.get("keyScale")
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    m = _KEYSCALE.match(v) if isinstance(v, str) else None
    if not m:
        raise _err("settings.keyScale", f"{_show(v)} is not a key; use a note A–G, an optional "
              "accidental (#, b, ♯, ♭) and 'major' or 'minor', e.g. 'F# minor' or 'Bb major'",
              "invalidFormat")
    note, acc, mode = m.groups()
    return f"{note.upper()}{(acc or '').lower()} {mode.lower()}"


def _time_signature(settings: Mapping) -> int | None:
    v = settings.get("timeSignature")
    if v is None or v == "":
        return None
    key = str(int(v)) if _is_number(v) and _is_integral(v) else v
    if not isinstance(key, str) or key.strip() not in TIME_SIGNATURES:
        raise _err("settings.timeSignature", f"{_show(v)} is not supported; use 2, 3, 4 or 6 "
              "(or '2/4', '3/4', '4/4', '6/8')", "invalidEnum")
    return TIME_SIGNATURES[key.strip()]


def _audio_settings(obj: Mapping, output_format: str) -> AudioSettings | None:
    raw = _object(obj, "audioSettings", "audioSettings", ("sampleRate", "bitrate", "channels"))
    if not raw:
        return None
    if output_format not in LOSSY_FORMATS:
        raise _err("audioSettings", f"applies to lossy formats only ({' and '.join(LOSSY_FORMATS)}); "
              f"remove it or set outputFormat to MP3 or OGG (got {output_format})",
              "conflictingParameters")
    channels = _choice_int(raw, "channels", "audioSettings.channels", (1, 2))
    rate = _choice_int(raw, "sampleRate", "audioSettings.sampleRate", LOSSY_SAMPLE_RATES)
    rate_used, channels_used = rate or MODEL_SAMPLE_RATE, channels or 2
    lo, hi = bitrate_limits(output_format, rate_used, channels_used)
    context = f" kbps for {output_format} at {rate_used} Hz, {channels_used} channel(s)"
    bitrate = _number(raw, "bitrate", "audioSettings.bitrate", lo, hi, integer=True,
                      context=context)
    return AudioSettings(sample_rate=rate, bitrate=bitrate, channels=channels)


def _choice_int(obj: Mapping, key: str, param: str, allowed: tuple[int, ...]) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if not _is_number(v) or not _is_integral(v) or int(v) not in allowed:
        raise _err(param, f"{_show(v)} is not allowed; use one of {', '.join(map(str, allowed))}",
              "invalidEnum")
    return int(v)


def _audio_source(v: Any, param: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise _err(param, f"expected a local path, a file:// URI or a data URI "
              f"(data:audio/<type>;base64,...), got {_show(v)}", "invalidType")
    if re.match(r"^(https?|ftp|s3)://", v, re.IGNORECASE):
        raise _err(param, "remote URLs are not fetched by this offline runtime; send a local path, "
              "a file:// URI or a data URI", "invalidFormat")
    if v.startswith("data:") and ";base64," not in v[:100]:
        raise _err(param, "data URIs must be base64: 'data:audio/<type>;base64,<data>'", "invalidFormat")
    return v


def _settings(obj: Mapping, has_source: bool) -> Settings:
    s = _object(obj, "settings", "settings", _SETTINGS_KEYS)
    p = "settings."
    start = _number(s, "cfgIntervalStart", p + "cfgIntervalStart", 0.0, 1.0, 0.0)
    end = _number(s, "cfgIntervalEnd", p + "cfgIntervalEnd", 0.0, 1.0, 1.0)
    if start > end:
        raise _err(p + "cfgIntervalStart", f"{start:g} is after cfgIntervalEnd {end:g}; "
              "send 0 <= cfgIntervalStart <= cfgIntervalEnd <= 1", "conflictingParameters")
    rs = _number(s, "repaintingStart", p + "repaintingStart", -600.0, 600.0)
    re_ = _number(s, "repaintingEnd", p + "repaintingEnd", -600.0, 600.0)
    if rs is not None and re_ is not None and re_ != -1 and re_ <= rs:
        raise _err(p + "repaintingEnd", f"{re_:g} s must be after repaintingStart {rs:g} s "
              "(or -1 for the end of the source)", "conflictingParameters")
    cover = _number(s, "coverConditioningScale", p + "coverConditioningScale", 0.0, 1.0)
    for name, value in (("coverConditioningScale", cover), ("repaintingStart", rs),
                        ("repaintingEnd", re_)):
        if value is not None and not has_source:
            raise _err(p + name, "needs source audio; send inputs.audio as well",
                  "conflictingParameters")
    task = _task(s, has_source, rs is not None or re_ is not None)
    if (rs is not None or re_ is not None) and task not in WINDOW_TASKS:
        name = "repaintingStart" if rs is not None else "repaintingEnd"
        raise _err(p + name, f"applies to tasks {' and '.join(WINDOW_TASKS)} only (task is {task}); "
              "remove it or set settings.task to repaint", "conflictingParameters")
    if cover is not None and task != "cover":
        raise _err(p + "coverConditioningScale", f"applies to task cover only (task is {task})",
              "conflictingParameters")
    if task == "repaint" and rs is None and re_ is None:
        raise _err(p + "repaintingStart", "task repaint needs a window: send settings.repaintingStart "
              "and/or settings.repaintingEnd in seconds (-1 = end of the source)", "missingParameter")
    mode = _choice(s, "repaintMode", p + "repaintMode", REPAINT_MODES, None)
    if mode is not None and (task not in WINDOW_TASKS or (rs is None and re_ is None)):
        raise _err(p + "repaintMode", f"applies to a repaint window only (tasks {' and '.join(WINDOW_TASKS)} with "
              f"settings.repaintingStart/repaintingEnd; task is {task})", "conflictingParameters")
    use_neg = s.get("useNegativePrompt", False)
    if not isinstance(use_neg, bool):
        raise _err(p + "useNegativePrompt", f"expected true or false, got {_show(use_neg)}",
              "invalidType")
    lang = _choice(s, "vocalLanguage", p + "vocalLanguage", VALID_LANGUAGES, "en")
    noise_source, noise_gpu = _noise(s)
    return Settings(
        lyrics=_string(s, "lyrics", p + "lyrics", max_chars=MAX_LYRICS_CHARS) or "",
        bpm=_number(s, "bpm", p + "bpm", *BPM_RANGE, integer=True),
        key_scale=_key_scale(s),
        time_signature=_time_signature(s),
        vocal_language=lang,
        guidance_type=_choice(s, "guidanceType", p + "guidanceType", GUIDANCE_TYPES, "apg"),
        cfg_interval_start=start,
        cfg_interval_end=end,
        cover_conditioning_scale=cover,
        repainting_start=rs,
        repainting_end=re_,
        shift=_number(s, "shift", p + "shift", 0.0, MAX_SHIFT, lo_open=True),
        task=task,
        track_name=_track_name(s, task),
        track_classes=_track_classes(s, task),
        use_negative_prompt=use_neg,
        reference_audio=_audio_source(s.get("referenceAudio"), p + "referenceAudio"),
        repaint_mode=mode or "balanced",
        noise=noise_source,
        noise_gpu=noise_gpu,
    )


def _noise(s: Mapping) -> tuple[str | None, str | None]:
    p = "settings."
    source = _choice(s, "noise", p + "noise", noise.SOURCES)
    raw = s.get("noiseGpu")
    if raw is None:
        return source, None
    if source not in (None, "torch-cuda"):
        raise _err(p + "noiseGpu", f"applies to settings.noise torch-cuda only (noise is {source}); remove it",
              "conflictingParameters")
    try:
        return source, noise.gpu(raw).name
    except ValueError as exc:
        raise _err(p + "noiseGpu", str(exc), "invalidParameter") from exc


def _check_strength(settings: Settings) -> None:
    # strength = how much the result may depart from the source: cover starts from the source
    # noised to that level, repaint/lego windows use it as the balanced-mode repaint strength.
    task = settings.task
    if task not in ("cover",) + WINDOW_TASKS:
        raise _err("strength", f"applies to tasks cover, repaint and lego only (task is {task}); "
              "remove it", "conflictingParameters")
    if task == "lego" and settings.repainting_start is None and settings.repainting_end is None:
        raise _err("strength", "applies to lego only with a repaint window (settings.repaintingStart/"
              "repaintingEnd); remove it", "conflictingParameters")
    if task in WINDOW_TASKS and settings.repaint_mode != "balanced":
        raise _err("strength", f"acts in settings.repaintMode 'balanced' only (mode is "
              f"{settings.repaint_mode!r}); remove strength or the mode", "conflictingParameters")


def _task(s: Mapping, has_source: bool, has_repaint: bool) -> str:
    # Runware has no task field: source audio with a repaint window means repaint, source audio
    # alone means cover. `settings.task` (local) overrides.
    inferred = "text2music" if not has_source else ("repaint" if has_repaint else "cover")
    task = _choice(s, "task", "settings.task", TASKS, inferred)
    if task in SOURCE_TASKS and not has_source:
        raise _err("settings.task", f"{task} needs source audio; send inputs.audio "
              "(a path, file:// URI or data URI) or use task text2music", "missingParameter")
    if task == "text2music" and has_source:
        raise _err("inputs.audio", "text2music does not use source audio; remove inputs.audio or set "
              f"settings.task to one of {', '.join(SOURCE_TASKS)}", "conflictingParameters")
    return task


def _track_name(s: Mapping, task: str) -> str | None:
    name = _choice(s, "trackName", "settings.trackName", TRACK_NAMES)
    if name is not None and task not in ("extract", "lego"):
        raise _err("settings.trackName", f"applies to tasks extract and lego only (task is {task})",
              "conflictingParameters")
    return name


def _track_classes(s: Mapping, task: str) -> tuple[str, ...]:
    v = s.get("trackClasses")
    if v is None:
        return ()
    param = "settings.trackClasses"
    if task != "complete":
        raise _err(param, f"applies to task complete only (task is {task})", "conflictingParameters")
    if not isinstance(v, (list, tuple)) or not v:
        raise _err(param, f"expected a non-empty list of track names from {', '.join(TRACK_NAMES)}, "
              f"got {_show(v)}", "invalidType")
    out: list[str] = []
    for item in v:
        name = _choice({"x": item}, "x", param, TRACK_NAMES)
        if name is None:
            raise _err(param, f"null is not a track name; use {', '.join(TRACK_NAMES)}", "invalidEnum")
        if name not in out:
            out.append(name)
    return tuple(out)


# ----------------------------------------------------------------------------- entry points


def parse_request(obj: Any) -> Request:
    """Validate one audioInference task (a dict from JSON); raises RequestError on the first fault."""
    if not isinstance(obj, Mapping):
        raise RequestError(None, f"a task must be a JSON object, got {_show(obj)}", "invalidType")
    task_uuid = None
    try:
        task_uuid = _task_uuid(obj)
        return _parse(obj, task_uuid)
    except RequestError as err:
        err.task_uuid = err.task_uuid or task_uuid or _raw_uuid(obj)
        raise


def _raw_uuid(obj: Mapping) -> str | None:
    v = obj.get("taskUUID")
    return v if isinstance(v, str) else None


def _parse(obj: Mapping, task_uuid: str) -> Request:
    warnings: list[str] = []
    for key in obj:
        if key in IGNORED_PLATFORM_OPTIONS:
            warnings.append(f"{key} is a Runware platform option; ignored offline")
        elif key not in _TOP_KEYS:
            raise _err(key, f"unknown parameter; allowed: {', '.join(_TOP_KEYS)}", "unknownParameter")
    if obj.get("deliveryMethod") not in (None, "sync"):
        raise _err("deliveryMethod", f"{_show(obj['deliveryMethod'])} is not supported offline; "
              "use 'sync' or leave it out", "invalidEnum")
    task_type = obj.get("taskType")
    if task_type is None:
        raise _err("taskType", f"is required; send '{TASK_TYPE}'", "missingParameter")
    if task_type != TASK_TYPE:
        raise _err("taskType", f"{_show(task_type)} is not supported; use '{TASK_TYPE}'", "invalidEnum")
    model = _choice(obj, "model", "model", (MODEL_ID,), MODEL_ID)
    inputs = _object(obj, "inputs", "inputs", ("audio",))
    source = _audio_source(inputs.get("audio"), "inputs.audio")
    duration = _number(obj, "duration", "duration", *DURATION_RANGE)
    if source is not None and duration is not None:
        raise _err("duration", "cannot be combined with inputs.audio (the source sets the length); "
              "remove one of them", "conflictingParameters")
    if source is None and duration is None:
        duration = DEFAULT_DURATION
    cfg = _number(obj, "CFGScale", "CFGScale", *CFG_RANGE, DEFAULT_CFG)
    negative = _string(obj, "negativePrompt", "negativePrompt", max_chars=MAX_PROMPT_CHARS) or None
    if negative is not None and cfg <= 1.0:
        raise _err("negativePrompt", f"needs CFGScale greater than 1 (got {cfg:g}); raise CFGScale "
              "or remove negativePrompt", "conflictingParameters")
    strength = _number(obj, "strength", "strength", 0.0, 1.0)
    if strength is not None and source is None:
        raise _err("strength", "needs source audio; send inputs.audio as well", "conflictingParameters")
    output_format = _choice(obj, "outputFormat", "outputFormat", FORMATS, "MP3")
    settings = _settings(obj, source is not None)
    if strength is not None:
        _check_strength(settings)
    if settings.use_negative_prompt and negative is None:
        raise _err("settings.useNegativePrompt", "is true but negativePrompt is missing; send a "
              "negativePrompt or set useNegativePrompt to false", "missingParameter")
    if negative is not None and not settings.use_negative_prompt:
        warnings.append("negativePrompt was not used: ACE-Step has no negative-text mechanism "
                        "(the learned null condition is the unconditional branch)")
    return Request(
        task_type=TASK_TYPE,
        task_uuid=task_uuid,
        model=model,
        positive_prompt=_string(obj, "positivePrompt", "positivePrompt",
                                max_chars=MAX_PROMPT_CHARS, required=True, allow_empty=False),
        negative_prompt=negative,
        duration=duration,
        seed=_number(obj, "seed", "seed", *SEED_RANGE, integer=True),
        steps=_number(obj, "steps", "steps", *STEPS_RANGE, DEFAULT_STEPS, integer=True),
        cfg_scale=cfg,
        number_results=_number(obj, "numberResults", "numberResults", *NUMBER_RESULTS_RANGE, 1,
                               integer=True),
        output_type=_choice(obj, "outputType", "outputType", OUTPUT_TYPES, "URL"),
        output_format=output_format,
        audio_settings=_audio_settings(obj, output_format),
        input_audio=source,
        strength=strength,
        settings=settings,
        warnings=tuple(warnings),
    )


def parse_requests(obj: Any) -> list[Request]:
    """Parse one task object, a JSON array of tasks (Runware's wire form), or their JSON text."""
    if isinstance(obj, (str, bytes, bytearray)):
        try:
            obj = json.loads(obj)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(None, f"request is not valid JSON: {exc}", "invalidJSON") from exc
    items = [obj] if isinstance(obj, Mapping) else obj
    if not isinstance(items, list) or not items:
        raise RequestError(None, "send an audioInference task object or a non-empty JSON array "
                           f"of them, got {_show(obj)}", "invalidType")
    requests: list[Request] = []
    for index, item in enumerate(items):
        req = parse_request(item)
        if any(r.task_uuid == req.task_uuid for r in requests):
            raise RequestError("taskUUID", f"taskUUID: {req.task_uuid} is used by more than one "
                               f"task (item {index}); every task needs its own UUID",
                               "duplicateTaskUUID", task_uuid=req.task_uuid)
        requests.append(req)
    return requests
