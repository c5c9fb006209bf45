"""Runware `audioInference` request: parse and validate JSON into frozen dataclasses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import noise
from .adapters import parse_lora
from .audio_fields import AudioSettings, audio_settings, audio_source
from .audio_io import FORMATS
from .fields import boolean, choice, field_error, is_integral, is_number, number, section, string
from .vocab import (COVER_SCALE_TASKS, GUIDANCE_TYPES, MAX_SECONDS, MIN_SECONDS, MODEL_ID, OUTPUT_TYPES,
                    REPAINT_MODES, SOURCE_OPTIONAL_TASKS, SOURCE_TASKS, STRENGTH_TASKS, TASK_TYPE,
                    TASKS, TIME_SIGNATURES, TRACK_NAMES, TRACK_TASKS, VALID_LANGUAGES, WINDOW_TASKS,
                    latent_frames_for)
from .wire import RequestError, check_unique, parse_body, show

__all__ = ["AudioSettings", "Request", "RequestError", "Settings", "TASK_TYPE", "latent_frames_for",
           "parse_request", "parse_requests"]

DEFAULT_DURATION = 60.0  # diffusers' default; the official code draws a random 10–120 s instead
DURATION_RANGE = (MIN_SECONDS, MAX_SECONDS)
STEPS_RANGE, DEFAULT_STEPS = (1, 200), 50
CFG_RANGE, DEFAULT_CFG = (1.0, 30.0), 7.0
NUMBER_RESULTS_RANGE = (1, 16)
SEED_RANGE = (0, 2**63 - 1)
BPM_RANGE = (30, 300)
MAX_PROMPT_CHARS = 3000
# Characters only: the tokenizer applies the 2048-token lyric cap later (prompts.PromptTokenizer).
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
_TOP_KEYS = (
    "taskType", "taskUUID", "model", "positivePrompt", "negativePrompt", "duration", "seed",
    "steps", "CFGScale", "numberResults", "outputType", "outputFormat", "audioSettings",
    "inputs", "strength", "settings", "lora",
)


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
    shift: float | None = None  # None = the bundle's default (runtime/defaults.py)
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
    lora: tuple = ()  # runtime/adapters.py LoraRef entries, in request order

    @property
    def latent_frames(self) -> int:
        if self.duration is None:
            raise ValueError("duration comes from the source audio; call latent_frames_for(seconds)")
        return latent_frames_for(self.duration)


# ----------------------------------------------------------------------------- sections


def _task_uuid(obj: Mapping) -> str:
    v = obj.get("taskUUID")
    how = "send a UUID v4 string such as '63675dd8-9c96-4d90-9eea-e239ce58d438'"
    if v is None:
        raise field_error("taskUUID", f"is required; {how}", "missingParameter")
    try:
        if isinstance(v, str) and len(v.strip()) == 36:
            return str(uuid.UUID(v))
    except ValueError:
        pass
    raise field_error("taskUUID", f"{show(v)} is not a UUID; {how}", "invalidFormat")


def _key_scale(settings: Mapping) -> str | None:
    v = settings.get("keyScale")
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    m = _KEYSCALE.match(v) if isinstance(v, str) else None
    if not m:
        raise field_error("settings.keyScale", f"{show(v)} is not a key; use a note A–G, an optional "
              "accidental (#, b, ♯, ♭) and 'major' or 'minor', e.g. 'F# minor' or 'Bb major'",
              "invalidFormat")
    note, acc, mode = m.groups()
    return f"{note.upper()}{(acc or '').lower()} {mode.lower()}"


def _time_signature(settings: Mapping) -> int | None:
    v = settings.get("timeSignature")
    if v is None or v == "":
        return None
    key = str(int(v)) if is_number(v) and is_integral(v) else v
    if not isinstance(key, str) or key.strip() not in TIME_SIGNATURES:
        raise field_error("settings.timeSignature", f"{show(v)} is not supported; use 2, 3, 4 or 6 "
              "(or '2/4', '3/4', '4/4', '6/8')", "invalidEnum")
    return TIME_SIGNATURES[key.strip()]


def _settings(obj: Mapping, has_source: bool) -> Settings:
    s = section(obj, "settings", "settings", _SETTINGS_KEYS)
    p = "settings."
    start = number(s, "cfgIntervalStart", p + "cfgIntervalStart", 0.0, 1.0, 0.0)
    end = number(s, "cfgIntervalEnd", p + "cfgIntervalEnd", 0.0, 1.0, 1.0)
    if start > end:
        raise field_error(p + "cfgIntervalStart", f"{start:g} is after cfgIntervalEnd {end:g}; "
              "send 0 <= cfgIntervalStart <= cfgIntervalEnd <= 1", "conflictingParameters")
    rs = number(s, "repaintingStart", p + "repaintingStart", -MAX_SECONDS, MAX_SECONDS)
    re_ = number(s, "repaintingEnd", p + "repaintingEnd", -MAX_SECONDS, MAX_SECONDS)
    if rs is not None and re_ is not None and re_ != -1 and re_ <= rs:
        raise field_error(p + "repaintingEnd", f"{re_:g} s must be after repaintingStart {rs:g} s "
              "(or -1 for the end of the source)", "conflictingParameters")
    cover = number(s, "coverConditioningScale", p + "coverConditioningScale", 0.0, 1.0)
    for name, value in (("coverConditioningScale", cover), ("repaintingStart", rs),
                        ("repaintingEnd", re_)):
        if value is not None and not has_source:
            raise field_error(p + name, "needs source audio; send inputs.audio as well",
                  "conflictingParameters")
    task = _task(s, has_source, rs is not None or re_ is not None)
    if (rs is not None or re_ is not None) and task not in WINDOW_TASKS:
        name = "repaintingStart" if rs is not None else "repaintingEnd"
        raise field_error(p + name, f"applies to tasks {' and '.join(WINDOW_TASKS)} only (task is {task}); "
              "remove it or set settings.task to repaint", "conflictingParameters")
    if cover is not None and task not in COVER_SCALE_TASKS:
        raise field_error(p + "coverConditioningScale", f"applies to tasks {' and '.join(COVER_SCALE_TASKS)} only "
              f"(task is {task})", "conflictingParameters")
    # repaint and lego without a window repaint the whole source (official defaults start 0, end None).
    mode = choice(s, "repaintMode", p + "repaintMode", REPAINT_MODES, None)
    if mode is not None and task not in WINDOW_TASKS:
        raise field_error(p + "repaintMode", f"applies to tasks {' and '.join(WINDOW_TASKS)} only (task is {task})",
              "conflictingParameters")
    use_neg = boolean(s, "useNegativePrompt", p + "useNegativePrompt")
    lang = choice(s, "vocalLanguage", p + "vocalLanguage", VALID_LANGUAGES, "en")
    noise_source, noise_gpu = noise.read_settings(s)
    return Settings(
        lyrics=string(s, "lyrics", p + "lyrics", max_chars=MAX_LYRICS_CHARS) or "",
        bpm=number(s, "bpm", p + "bpm", *BPM_RANGE, integer=True),
        key_scale=_key_scale(s),
        time_signature=_time_signature(s),
        vocal_language=lang,
        guidance_type=choice(s, "guidanceType", p + "guidanceType", GUIDANCE_TYPES, "apg"),
        cfg_interval_start=start,
        cfg_interval_end=end,
        cover_conditioning_scale=cover,
        repainting_start=rs,
        repainting_end=re_,
        shift=number(s, "shift", p + "shift", 0.0, MAX_SHIFT, lo_open=True),
        task=task,
        track_name=_track_name(s, task),
        track_classes=_track_classes(s, task),
        use_negative_prompt=use_neg,
        reference_audio=audio_source(s.get("referenceAudio"), p + "referenceAudio"),
        repaint_mode=mode or "balanced",
        noise=noise_source,
        noise_gpu=noise_gpu,
    )


def _check_strength(settings: Settings) -> None:
    # strength = how much the result may depart from the source: repaint and a windowed lego use it
    # as the balanced-mode repaint strength; every other source task starts from the source noised
    # to that level (the official cover_noise_strength acts on any task).
    task = settings.task
    if task not in STRENGTH_TASKS:
        raise field_error("strength", f"applies to tasks {', '.join(STRENGTH_TASKS)} only (task is {task}); "
              "remove it", "conflictingParameters")
    windowed = settings.repainting_start is not None or settings.repainting_end is not None
    if (task == "repaint" or (task == "lego" and windowed)) and settings.repaint_mode != "balanced":
        raise field_error("strength", f"acts in settings.repaintMode 'balanced' only (mode is "
              f"{settings.repaint_mode!r}): the official handler ignores the repaint strength in the "
              "conservative and aggressive modes, so it would change nothing; remove strength or the mode",
              "conflictingParameters")


def _task(s: Mapping, has_source: bool, has_repaint: bool) -> str:
    # Runware has no task field: source audio with a repaint window means repaint, source audio
    # alone means cover. `settings.task` (local) overrides.
    inferred = "text2music" if not has_source else ("repaint" if has_repaint else "cover")
    task = choice(s, "task", "settings.task", TASKS, inferred)
    if task in SOURCE_TASKS and task not in SOURCE_OPTIONAL_TASKS and not has_source:
        raise field_error("settings.task", f"{task} needs source audio; send inputs.audio "
              "(a path, file:// URI or data URI) or use task text2music", "missingParameter")
    if task == "text2music" and has_source:
        raise field_error("inputs.audio", "text2music does not use source audio; remove inputs.audio or set "
              f"settings.task to one of {', '.join(SOURCE_TASKS)}", "conflictingParameters")
    return task


def _track_name(s: Mapping, task: str) -> str | None:
    name = choice(s, "trackName", "settings.trackName", TRACK_NAMES)
    if name is not None and task not in TRACK_TASKS:
        raise field_error("settings.trackName", f"applies to tasks extract and lego only (task is {task})",
              "conflictingParameters")
    return name


def _track_classes(s: Mapping, task: str) -> tuple[str, ...]:
    v = s.get("trackClasses")
    if v is None:
        return ()
    param = "settings.trackClasses"
    if task != "complete":
        raise field_error(param, f"applies to task complete only (task is {task})", "conflictingParameters")
    if not isinstance(v, (list, tuple)) or not v:
        raise field_error(param, f"expected a non-empty list of track names from {', '.join(TRACK_NAMES)}, "
              f"got {show(v)}", "invalidType")
    out: list[str] = []
    for item in v:
        name = choice({"x": item}, "x", param, TRACK_NAMES)
        if name is None:
            raise field_error(param, f"null is not a track name; use {', '.join(TRACK_NAMES)}", "invalidEnum")
        if name not in out:
            out.append(name)
    return tuple(out)


# ----------------------------------------------------------------------------- entry points


def parse_request(obj: Any) -> Request:
    """Validate one audioInference task (a dict from JSON); raises RequestError on the first fault."""
    if not isinstance(obj, Mapping):
        raise RequestError(None, f"a task must be a JSON object, got {show(obj)}", "invalidType")
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
            raise field_error(key, f"unknown parameter; allowed: {', '.join(_TOP_KEYS)}", "unknownParameter")
    if obj.get("deliveryMethod") not in (None, "sync"):
        raise field_error("deliveryMethod", f"{show(obj['deliveryMethod'])} is not supported offline; "
              "use 'sync' or leave it out", "invalidEnum")
    task_type = obj.get("taskType")
    if task_type is None:
        raise field_error("taskType", f"is required; send '{TASK_TYPE}'", "missingParameter")
    if task_type != TASK_TYPE:
        raise field_error("taskType", f"{show(task_type)} is not supported; use '{TASK_TYPE}'", "invalidEnum")
    model = choice(obj, "model", "model", (MODEL_ID,), MODEL_ID)
    inputs = section(obj, "inputs", "inputs", ("audio",))
    source = audio_source(inputs.get("audio"), "inputs.audio")
    duration = number(obj, "duration", "duration", *DURATION_RANGE)
    if source is not None and duration is not None:
        raise field_error("duration", "cannot be combined with inputs.audio (the source sets the length); "
              "remove one of them", "conflictingParameters")
    if source is None and duration is None:
        duration = DEFAULT_DURATION
    cfg = number(obj, "CFGScale", "CFGScale", *CFG_RANGE, DEFAULT_CFG)
    negative = string(obj, "negativePrompt", "negativePrompt", max_chars=MAX_PROMPT_CHARS) or None
    if negative is not None and cfg <= 1.0:
        raise field_error("negativePrompt", f"needs CFGScale greater than 1 (got {cfg:g}); raise CFGScale "
              "or remove negativePrompt", "conflictingParameters")
    strength = number(obj, "strength", "strength", 0.0, 1.0)
    if strength is not None and source is None:
        raise field_error("strength", "needs source audio; send inputs.audio as well", "conflictingParameters")
    output_format = choice(obj, "outputFormat", "outputFormat", FORMATS, "MP3")
    settings = _settings(obj, source is not None)
    if strength is not None:
        _check_strength(settings)
    if settings.use_negative_prompt and negative is None:
        raise field_error("settings.useNegativePrompt", "is true but negativePrompt is missing; send a "
              "negativePrompt or set useNegativePrompt to false", "missingParameter")
    if negative is not None and not settings.use_negative_prompt:
        warnings.append("negativePrompt was not used: ACE-Step has no negative-text mechanism "
                        "(the learned null condition is the unconditional branch)")
    return Request(
        task_type=TASK_TYPE,
        task_uuid=task_uuid,
        model=model,
        positive_prompt=string(obj, "positivePrompt", "positivePrompt",
                               max_chars=MAX_PROMPT_CHARS, required=True, allow_empty=False),
        negative_prompt=negative,
        duration=duration,
        seed=number(obj, "seed", "seed", *SEED_RANGE, integer=True),
        steps=number(obj, "steps", "steps", *STEPS_RANGE, DEFAULT_STEPS, integer=True),
        cfg_scale=cfg,
        number_results=number(obj, "numberResults", "numberResults", *NUMBER_RESULTS_RANGE, 1,
                              integer=True),
        output_type=choice(obj, "outputType", "outputType", OUTPUT_TYPES, "URL"),
        output_format=output_format,
        audio_settings=audio_settings(obj, output_format),
        input_audio=source,
        strength=strength,
        settings=settings,
        warnings=tuple(warnings),
        lora=parse_lora(obj.get("lora")),
    )



def parse_requests(obj: Any) -> list[Request]:
    """Parse one task object, a JSON array of tasks (Runware's wire form), or their JSON text."""
    requests: list[Request] = []
    seen: set[str] = set()
    for item in parse_body(obj):
        req = parse_request(item)
        check_unique(req.task_uuid, seen)
        requests.append(req)
    return requests
