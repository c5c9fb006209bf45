"""Request validation and response shaping: the four real Runware requests and a bad-input table."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path

import pytest

from acestep_edge.runtime.request import (
    RequestError,
    latent_frames_for,
    parse_request,
    parse_requests,
)
from acestep_edge.runtime.response import build_response, error_response, output_filename

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "requests"
REQUEST_FILES = sorted(p for p in EXAMPLES.glob("*.json") if not p.name.endswith(".response.json"))
UUID = "63675dd8-9c96-4d90-9eea-e239ce58d438"


def _base(**overrides):
    req = {
        "taskType": "audioInference",
        "taskUUID": UUID,
        "model": "runware:ace-step@v1.5-xl-base",
        "positivePrompt": "calm piano",
        "duration": 30,
    }
    req.update(overrides)
    return req


def _with_settings(**settings):
    return _base(settings=settings)


@pytest.mark.parametrize("path", REQUEST_FILES, ids=lambda p: p.stem)
def test_real_requests_parse(path):
    raw = json.loads(path.read_text())
    (req,) = parse_requests(raw)
    assert req.task_uuid == raw["taskUUID"]
    assert req.seed == raw["seed"] and req.steps == raw["steps"]
    assert req.cfg_scale == float(raw["CFGScale"])
    assert req.duration == float(raw["duration"])
    s = raw["settings"]
    assert req.settings.bpm == s["bpm"]
    assert req.settings.key_scale == s["keyScale"]
    assert req.settings.time_signature == s["timeSignature"]
    assert req.settings.vocal_language == s["vocalLanguage"]
    assert req.settings.lyrics == s["lyrics"]
    assert (req.settings.cfg_interval_start, req.settings.cfg_interval_end) == (
        s["cfgIntervalStart"], s["cfgIntervalEnd"])
    assert req.settings.task == "text2music" and req.settings.shift is None
    assert req.output_format == "MP3" and req.output_type == "URL"
    assert req.latent_frames == int(raw["duration"] * 25)
    assert any("negativePrompt" in w for w in req.warnings)


def test_array_and_text_forms():
    a = _base()
    b = _base(taskUUID=str(uuid.uuid4()))
    assert [r.task_uuid for r in parse_requests([a, b])] == [a["taskUUID"], b["taskUUID"]]
    assert parse_requests(json.dumps(a))[0].positive_prompt == "calm piano"
    with pytest.raises(RequestError) as e:
        parse_requests([a, copy.deepcopy(a)])
    assert e.value.parameter == "taskUUID" and "more than one" in e.value.message
    with pytest.raises(RequestError) as e:
        parse_requests("{not json")
    assert e.value.code == "invalidJSON"
    with pytest.raises(RequestError):
        parse_requests([])


def test_defaults_and_normalisation():
    req = parse_request(_base(outputFormat="wav", outputType="dataURI", settings={
        "keyScale": "bb MINOR", "timeSignature": "6/8", "vocalLanguage": "IS",
        "guidanceType": "CFG", "shift": 1}))
    assert req.output_format == "WAV" and req.output_type == "dataURI"
    assert req.settings.key_scale == "Bb minor"
    assert req.settings.time_signature == 6
    assert req.settings.vocal_language == "is"
    assert req.settings.guidance_type == "cfg" and req.settings.shift == 1.0
    d = parse_request({k: v for k, v in _base().items() if k != "duration"})
    assert (d.steps, d.cfg_scale, d.number_results, d.seed, d.duration) == (50, 7.0, 1, None, 60.0)
    assert d.settings.guidance_type == "apg" and d.output_format == "MP3"
    assert parse_request(_with_settings(keyScale="F♯ major")).settings.key_scale == "F♯ major"
    assert parse_request(_base(seed=2**63 - 1)).seed == 2**63 - 1


def test_latent_frames():
    assert latent_frames_for(10) == 250
    assert latent_frames_for(600) == 15000
    assert latent_frames_for(4.0) == 128  # floor of 128 frames
    assert latent_frames_for(30.04) == 750  # duration rounded to 0.1 s first


def test_tasks_and_sources(tmp_path):
    src = str(tmp_path / "a.wav")
    no_dur = {k: v for k, v in _base().items() if k != "duration"}
    cover = parse_request({**no_dur, "inputs": {"audio": src}})
    assert cover.settings.task == "cover" and cover.duration is None
    with pytest.raises(ValueError):
        cover.latent_frames
    rep = parse_request({**no_dur, "inputs": {"audio": src},
                         "settings": {"repaintingStart": 5, "repaintingEnd": 9}})
    assert rep.settings.task == "repaint"
    ext = parse_request({**no_dur, "inputs": {"audio": src},
                         "settings": {"task": "extract", "trackName": "Vocals"}})
    assert ext.settings.track_name == "vocals"
    comp = parse_request({**no_dur, "inputs": {"audio": src},
                          "settings": {"task": "complete", "trackClasses": ["drums", "BASS"]}})
    assert comp.settings.track_classes == ("drums", "bass")
    data_uri = "data:audio/wav;base64," + base64.b64encode(b"RIFF").decode()
    assert parse_request({**no_dur, "inputs": {"audio": data_uri}}).input_audio == data_uri


def test_platform_options_are_ignored_with_warning():
    req = parse_request(_base(includeCost=True, deliveryMethod="sync"))
    assert any("includeCost" in w for w in req.warnings)


# (request overrides or a function of the base request, parameter named, words the message must
# contain: the allowed values or range / how to fix it)
BAD = [
    ("missing prompt", lambda r: r.pop("positivePrompt"), "positivePrompt", ["required"]),
    ("empty prompt", {"positivePrompt": "  "}, "positivePrompt", ["1 to 3000"]),
    ("prompt wrong type", {"positivePrompt": 42}, "positivePrompt", ["string"]),
    ("missing taskType", lambda r: r.pop("taskType"), "taskType", ["audioInference"]),
    ("other taskType", {"taskType": "imageInference"}, "taskType", ["audioInference"]),
    ("missing taskUUID", lambda r: r.pop("taskUUID"), "taskUUID", ["UUID"]),
    ("bad taskUUID", {"taskUUID": "not-a-uuid"}, "taskUUID", ["UUID", "not-a-uuid"]),
    ("taskUUID number", {"taskUUID": 12}, "taskUUID", ["UUID"]),
    ("duration short", {"duration": 5}, "duration", ["10", "600", "5"]),
    ("duration long", {"duration": 601}, "duration", ["10", "600"]),
    ("duration string", {"duration": "30"}, "duration", ["number", "10", "600"]),
    ("duration bool", {"duration": True}, "duration", ["number"]),
    ("steps zero", {"steps": 0}, "steps", ["1", "200"]),
    ("steps big", {"steps": 201}, "steps", ["1", "200"]),
    ("steps float", {"steps": 12.5}, "steps", ["integer"]),
    ("cfg low", {"CFGScale": 0.5}, "CFGScale", ["1", "30"]),
    ("cfg high", {"CFGScale": 31}, "CFGScale", ["1", "30"]),
    ("seed negative", {"seed": -1}, "seed", ["integer", "0"]),
    ("seed float", {"seed": 1.5}, "seed", ["integer"]),
    ("results", {"numberResults": 17}, "numberResults", ["1", "16"]),
    ("output format", {"outputFormat": "AAC"}, "outputFormat", ["MP3", "WAV", "FLAC", "OGG"]),
    ("output type", {"outputType": "file"}, "outputType", ["URL", "base64Data", "dataURI"]),
    ("unknown field", {"colour": "red"}, "colour", ["unknown", "positivePrompt"]),
    ("unknown model", {"model": "runware:ace-step@v1.5-turbo"}, "model",
     ["runware:ace-step@v1.5-xl-base"]),
    ("negative with cfg 1", {"negativePrompt": "noise", "CFGScale": 1}, "negativePrompt",
     ["greater than 1"]),
    ("bpm low", {"settings": {"bpm": 20}}, "settings.bpm", ["30", "300"]),
    ("bpm high", {"settings": {"bpm": 301}}, "settings.bpm", ["30", "300"]),
    ("bpm string", {"settings": {"bpm": "fast"}}, "settings.bpm", ["integer", "30", "300"]),
    ("guidance", {"settings": {"guidanceType": "pag"}}, "settings.guidanceType",
     ["apg", "cfg", "adg"]),
    ("key no mode", {"settings": {"keyScale": "D"}}, "settings.keyScale", ["major", "minor"]),
    ("key bad note", {"settings": {"keyScale": "H minor"}}, "settings.keyScale", ["A–G"]),
    ("key dorian", {"settings": {"keyScale": "D dorian"}}, "settings.keyScale", ["'major'"]),
    ("time sig 5/4", {"settings": {"timeSignature": "5/4"}}, "settings.timeSignature",
     ["2, 3, 4 or 6", "6/8"]),
    ("time sig 12", {"settings": {"timeSignature": 12}}, "settings.timeSignature", ["2, 3, 4"]),
    ("language", {"settings": {"vocalLanguage": "english"}}, "settings.vocalLanguage",
     ["en", "unknown"]),
    ("cfg interval", {"settings": {"cfgIntervalStart": 0.9, "cfgIntervalEnd": 0.2}},
     "settings.cfgIntervalStart", ["cfgIntervalEnd", "<="]),
    ("cfg interval range", {"settings": {"cfgIntervalEnd": 1.5}}, "settings.cfgIntervalEnd",
     ["0", "1"]),
    ("unknown setting", {"settings": {"tempo": 120}}, "settings.tempo", ["unknown", "bpm"]),
    ("settings not object", {"settings": [1]}, "settings", ["object"]),
    ("shift zero", {"settings": {"shift": 0}}, "settings.shift", ["greater than 0"]),
    ("task unknown", {"settings": {"task": "remix"}}, "settings.task", ["text2music", "cover"]),
    ("task needs audio", {"settings": {"task": "cover"}}, "settings.task", ["inputs.audio"]),
    ("track name", {"settings": {"trackName": "vocals"}}, "settings.trackName",
     ["extract", "lego"]),
    ("lyrics too long", {"settings": {"lyrics": "x" * 10_001}}, "settings.lyrics", ["10000"]),
    ("neg opt-in alone", {"settings": {"useNegativePrompt": True}},
     "settings.useNegativePrompt", ["negativePrompt"]),
    ("audioSettings on WAV", {"outputFormat": "WAV", "audioSettings": {"bitrate": 128}},
     "audioSettings", ["MP3", "OGG"]),
    ("bitrate too high", {"audioSettings": {"bitrate": 500}}, "audioSettings.bitrate",
     ["32", "320"]),
    ("bitrate low rate", {"audioSettings": {"sampleRate": 8000, "bitrate": 128}},
     "audioSettings.bitrate", ["8", "64"]),
    ("sample rate", {"audioSettings": {"sampleRate": 96000}}, "audioSettings.sampleRate",
     ["44100", "48000"]),
    ("channels", {"audioSettings": {"channels": 6}}, "audioSettings.channels", ["1, 2"]),
    ("audioSettings unknown", {"audioSettings": {"quality": 3}}, "audioSettings.quality",
     ["sampleRate", "bitrate", "channels"]),
    ("strength without audio", {"strength": 0.5}, "strength", ["inputs.audio"]),
    ("repaint without audio", {"settings": {"repaintingStart": 1}}, "settings.repaintingStart",
     ["inputs.audio"]),
    ("remote audio", {"inputs": {"audio": "https://x.org/a.mp3"}}, "inputs.audio",
     ["local path", "data URI"]),
    ("duration with audio", {"inputs": {"audio": "/tmp/a.wav"}}, "duration", ["inputs.audio"]),
    ("async", {"deliveryMethod": "async"}, "deliveryMethod", ["sync"]),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs(case):
    _, change, parameter, words = case
    req = _base()
    if callable(change):
        change(req)
    else:
        req.update(change)
    with pytest.raises(RequestError) as e:
        parse_request(req)
    err = e.value
    assert err.parameter == parameter, err.message
    assert err.message.startswith(parameter), err.message
    for word in words:
        assert word in err.message, (word, err.message)
    if parameter != "taskUUID":
        assert err.task_uuid == UUID


def test_error_response_shape():
    with pytest.raises(RequestError) as e:
        parse_request(_with_settings(bpm=999))
    body = error_response(e.value)
    (entry,) = body["errors"]
    assert set(entry) == {"code", "message", "parameter", "taskType", "taskUUID"}
    assert entry["parameter"] == "settings.bpm" and entry["code"] == "valueOutOfRange"
    assert entry["taskUUID"] == UUID and entry["taskType"] == "audioInference"
    other = error_response([RuntimeError("latents are NaN")], task_uuid=UUID)["errors"][0]
    assert other["code"] == "internalServerError" and "NaN" in other["message"]
    json.dumps(body)


def test_build_response(tmp_path):
    req = parse_request(_base(negativePrompt="noise"))
    aid = str(uuid.uuid4())
    path = tmp_path / output_filename(req, aid)
    path.write_bytes(b"ID3")
    resp = build_response(req, seed=7, path=path, audio_uuid=aid, timings={"dit": 1.23456},
                          warnings=["w"])
    assert resp["audioURL"] == path.resolve().as_uri() and resp["audioURL"].startswith("file://")
    assert resp["audioURL"].endswith(f"{aid}.mp3")
    assert resp["taskUUID"] == UUID and resp["seed"] == 7 and resp["audioUUID"] == aid
    assert resp["timings"] == {"dit": 1.2346} and resp["warnings"][-1] == "w"
    assert any("negativePrompt" in w for w in resp["warnings"])
    b64 = build_response(parse_request(_base(outputType="base64Data")), seed=1, audio_bytes=b"ab")
    assert b64["audioBase64Data"] == base64.b64encode(b"ab").decode() and "audioURL" not in b64
    uri = build_response(parse_request(_base(outputType="dataURI", outputFormat="OGG")), seed=1,
                         audio_bytes=b"ab")
    assert uri["audioDataURI"] == "data:audio/ogg;base64," + base64.b64encode(b"ab").decode()
    assert uuid.UUID(b64["audioUUID"]).version == 4
    with pytest.raises(ValueError):
        build_response(req, seed=1)


@pytest.mark.parametrize("settings,top", [
    ({"task": "complete", "trackClasses": ["bass"]}, {}),  # no inputs.audio: a silent target
    ({"task": "repaint"}, {"inputs": {"audio": "/tmp/a.wav"}}),  # the whole source
    ({"repaintingStart": 1, "coverConditioningScale": 0.5}, {"inputs": {"audio": "/tmp/a.wav"}}),
    ({"task": "extract"}, {"inputs": {"audio": "/tmp/a.wav"}, "strength": 0.4}),
    ({"task": "complete"}, {"inputs": {"audio": "/tmp/a.wav"}, "strength": 0.4}),
    ({"task": "lego", "repaintMode": "conservative"}, {"inputs": {"audio": "/tmp/a.wav"}, "strength": 0.4}),
])
def test_combinations_the_official_handler_accepts(settings, top):
    req = _base(settings=settings, **top)
    if "inputs" in top:
        req.pop("duration")
    parsed = parse_request(req)
    assert parsed.settings.task == settings.get("task", "repaint")
    if "inputs" not in top:
        assert parsed.duration == 30 and parsed.input_audio is None
