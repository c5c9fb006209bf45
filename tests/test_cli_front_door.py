"""The CLI as a newcomer meets it: output paths, formats, bundle errors, progress, sources, warnings, exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
from click.testing import CliRunner

import acestep_edge
from acestep_edge.cli import main
from acestep_edge.runtime.bundle import fix_hint
from acestep_edge.runtime.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
UUID = "5b1d7c3e-2f4a-4c6b-9d8e-7f0a1b2c3d4e"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def request(**changes) -> dict:
    data = {"taskType": "audioInference", "taskUUID": UUID, "positivePrompt": "a short test", "duration": 10,
            "steps": 2, "seed": 3}
    data.update(changes)
    return data


def generate(data, *args, cwd) -> tuple[int, dict | list, str]:
    """`acestep-edge generate -` in process, plain progress; (exit code, printed JSON, stderr)."""
    runner = CliRunner()
    with _chdir(cwd):
        result = runner.invoke(main, ["generate", "-", "--bundle", str(acestep_edge.DEMO_BUNDLE), "--threads", "1",
                                      "--progress", "plain", *map(str, args)], input=json.dumps(data))
    return result.exit_code, json.loads(result.stdout), result.stderr


class _chdir:
    def __init__(self, path):
        self.path, self.old = path, None

    def __enter__(self):
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.old)


def cli(*args, stdin: str | None = None, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acestep_edge.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, cwd=cwd, timeout=300, **kwargs)


def rendered(stderr: str) -> bool:
    """Whether the DiT ran: plain progress prints one line per stage."""
    return "DiT steps" in stderr


# 1. --out in a missing folder ----------------------------------------------------------------

def test_missing_out_folders_are_made_and_a_blocked_path_fails_before_rendering(tmp_path):
    out = tmp_path / "new" / "deeper" / "song.wav"
    code, response, _ = generate(request(), "--out", out, cwd=tmp_path)
    assert code == 0 and Path(response["audioURL"].removeprefix("file://")) == out and out.is_file()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, response, stderr = generate(request(), "--out", blocker / "song.wav", cwd=tmp_path)
    error = response["errors"][0]
    assert code != 0 and error["parameter"] == "out" and error["code"] == "invalidOutputPath"
    assert str(blocker) in error["message"] and error["taskUUID"] == UUID
    assert not rendered(stderr)


# 2. the --out extension picks the format ------------------------------------------------------

@pytest.mark.parametrize("suffix,fmt", [(".flac", "FLAC"), (".wav", "WAV"), (".ogg", "OGG")])
def test_out_extension_picks_the_format(tmp_path, suffix, fmt):
    out = tmp_path / f"x{suffix}"
    code, response, _ = generate(request(), "--out", out, cwd=tmp_path)
    assert code == 0, response
    assert sf.info(str(out)).format == fmt


def test_out_extension_conflicting_with_output_format_is_refused_before_rendering(tmp_path):
    code, response, stderr = generate(request(outputFormat="MP3"), "--out", tmp_path / "x.wav", cwd=tmp_path)
    error = response["errors"][0]
    assert code != 0 and error["parameter"] == "outputFormat" and error["code"] == "conflictingParameters"
    assert ".mp3" in error["message"] and not rendered(stderr) and not list(tmp_path.iterdir())


# 3. several results and one file name ---------------------------------------------------------

def test_several_results_are_numbered_beside_the_named_file(tmp_path):
    code, responses, _ = generate(request(numberResults=2), "--out", tmp_path / "song.wav", cwd=tmp_path)
    assert code == 0
    assert [r["audioURL"] for r in responses] == [(tmp_path / f"song-{i}.wav").as_uri() for i in (1, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song-1.wav", "song-2.wav"]
    assert [r["seed"] for r in responses] == [3, 4]


# 4. bundle errors: a named code, the task's UUID, a hint for the folder given -------------------

def _bundle_error(bundle, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", "-", "--bundle", str(bundle), "--out", str(tmp_path / "o.wav")],
                           input=json.dumps(request()))
    assert result.exit_code != 0
    assert not (tmp_path / "o.wav").exists()
    return json.loads(result.stdout)["errors"][0]


def test_missing_bundle_folder(tmp_path):
    error = _bundle_error(tmp_path / "nope", tmp_path)
    assert error["code"] == "bundleNotFound" and error["taskUUID"] == UUID
    assert f"--out {tmp_path / 'nope'}`" in error["message"]  # whole: the message fits the 300-character cap


def test_a_file_is_not_a_bundle_folder(tmp_path):
    error = _bundle_error(ROOT / "README.md", tmp_path)
    assert error["code"] == "notABundle" and "is a file, not a bundle folder" in error["message"]
    assert "does not exist" not in error["message"]


def test_copied_bundle_missing_a_graph_names_the_copy(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(acestep_edge.DEMO_BUNDLE, copy)
    (copy / "dit.onnx").unlink()
    error = _bundle_error(copy, tmp_path)
    assert error["code"] == "bundleGraphMissing" and error["taskUUID"] == UUID
    assert str(copy / "dit.onnx") in error["message"]
    assert f"python -m acestep_edge.export.demo_bundle --out {copy}`" in error["message"]


def test_fix_hint_retargets_the_export_command_at_the_folder_given(tmp_path):
    manifest = {"export": {"command": "acestep-edge export --checkpoint /ckpt --out /old/place --precision fp16"}}
    hint = fix_hint(tmp_path / "moved", manifest)
    assert f"acestep-edge export --checkpoint /ckpt --out {tmp_path / 'moved'} --precision fp16" in hint
    assert "/old/place" not in hint


# 5. progress for every stage ------------------------------------------------------------------

def test_plain_progress_prints_one_line_per_stage(tmp_path):
    """Every stage, in order: the encoders, the DiT steps, the VAE chunks (30 s = 750 frames: two chunks of
    at most 512), the write; a second result repeats its own DiT, decode and write."""
    code, _, stderr = generate(request(steps=3, duration=30), "--out", tmp_path / "p.wav", cwd=tmp_path)
    lines = [line.removeprefix(f"{UUID[:8]}: ") for line in stderr.splitlines() if line.startswith(UUID[:8])]
    assert code == 0 and lines == ["text encoder", "condition encoder", "DiT steps (3 steps)",
                                   "VAE decode (2 chunks)", "write"]
    code, _, stderr = generate(request(steps=2, numberResults=2), "--out", tmp_path / "q.wav", cwd=tmp_path)
    lines = [line.removeprefix(f"{UUID[:8]}: ") for line in stderr.splitlines() if line.startswith(UUID[:8])]
    assert code == 0 and lines == ["text encoder", "condition encoder", "DiT steps (2 steps)", "VAE decode",
                                   "DiT steps (2 steps)", "VAE decode", "write (2 files)"]


def test_progress_none_is_silent_and_bar_redraws_one_line_per_stage(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", "-", "--bundle", str(acestep_edge.DEMO_BUNDLE), "--progress", "none",
                                  "--out", str(tmp_path / "q.wav")], input=json.dumps(request()))
    assert result.exit_code == 0 and result.stderr == ""
    stream = io.StringIO()
    bar = Progress("bar", label="job", stream=stream)
    for name in ("text_encoder", "condition_encoder", "text_encoder"):  # an encoder run again is not redrawn
        bar(name, 0, 1)
        bar(name, 1, 1)
    for i in range(4):
        bar("dit", i, 3)
    bar("write", 1, 1)
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 4 and text.count("\r") == 9 and "3/3" in text and "[" + "#" * 30 + "]" in text
    assert text.count("text encoder") == 2  # its 0/1 and 1/1 frames, once


# 6. the demo ------------------------------------------------------------------------------------

def test_demo_request_causes_no_warnings_of_its_own(tmp_path):
    from acestep_edge.runtime.prompts import PromptTokenizer
    from acestep_edge.runtime.request import parse_request

    data = json.loads(acestep_edge.DEMO_REQUEST.read_text())
    req = parse_request(data)
    assert "negativePrompt" not in data and not req.warnings
    tokenizer = PromptTokenizer.from_file(acestep_edge.DEMO_BUNDLE / "tokenizer.json")
    assert not tokenizer.encode_caption(data["positivePrompt"])[1]  # not truncated at 256 tokens
    runner = CliRunner()
    with _chdir(tmp_path):
        result = runner.invoke(main, ["demo", "--threads", "1", "--progress", "plain"])
    assert result.exit_code == 0, result.output
    response = json.loads(result.stdout)
    assert response["warnings"] == [] and Path(response["audioURL"].removeprefix("file://")).parent == \
        tmp_path / "demo-output"
    assert "DiT steps" in result.stderr and "write" in result.stderr


# 7. graphs load when first needed --------------------------------------------------------------

def test_bundle_without_vae_encoder_renders_text2music_and_refuses_cover(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(acestep_edge.DEMO_BUNDLE, bundle)
    (bundle / "vae_encoder.onnx").unlink()
    runner = CliRunner()
    result = runner.invoke(main, ["generate", "-", "--bundle", str(bundle), "--out", str(tmp_path / "t.wav")],
                           input=json.dumps(request()))
    assert result.exit_code == 0, result.output
    response = json.loads(result.stdout)
    assert set(response["providers"]) == {"text_encoder", "condition_encoder", "dit", "vae_decoder"}
    clip = tmp_path / "clip.wav"
    sf.write(str(clip), 0.1 * np.ones((48000 * 2, 2)), 48000)
    cover = request(inputs={"audio": str(clip)})
    cover.pop("duration")
    result = runner.invoke(main, ["generate", "-", "--bundle", str(bundle), "--progress", "plain", "--out",
                                  str(tmp_path / "c.wav")], input=json.dumps(cover))
    error = json.loads(result.stdout)["errors"][0]
    assert result.exit_code != 0 and error["parameter"] == "inputs.audio" and "vae_encoder" in error["message"]
    assert not rendered(result.stderr) and not (tmp_path / "c.wav").exists()


# 9. relative sources resolve against the request file's folder ---------------------------------

def test_relative_source_is_read_from_the_request_files_folder(tmp_path):
    folder = tmp_path / "requests"
    folder.mkdir()
    sf.write(str(folder / "clip.wav"), 0.2 * np.sin(np.arange(48000 * 3) / 20.0)[:, None].repeat(2, 1), 48000)
    data = request(inputs={"audio": "clip.wav"})
    data.pop("duration")
    (folder / "cover.json").write_text(json.dumps(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runner = CliRunner()
    with _chdir(elsewhere):
        ok = runner.invoke(main, ["generate", str(folder / "cover.json"), "--bundle", str(acestep_edge.DEMO_BUNDLE),
                                  "--out", "c.wav"])
        assert ok.exit_code == 0, ok.output
        assert (elsewhere / "c.wav").is_file()
        (folder / "clip.wav").rename(elsewhere / "clip.wav")  # now only beside the current folder
        missing = runner.invoke(main, ["generate", str(folder / "cover.json"), "--bundle",
                                       str(acestep_edge.DEMO_BUNDLE), "--out", "d.wav"])
        error = json.loads(missing.stdout)["errors"][0]
        assert missing.exit_code != 0 and error["parameter"] == "inputs.audio" and str(folder) in error["message"]
        from_stdin = runner.invoke(main, ["generate", "-", "--bundle", str(acestep_edge.DEMO_BUNDLE), "--out",
                                          "e.wav"], input=json.dumps(data))
        assert from_stdin.exit_code == 0, from_stdin.output  # stdin: the current folder


# 10. a text file named .mp3 -------------------------------------------------------------------------

def test_text_file_named_mp3_is_not_a_readable_audio_file_and_libraries_stay_quiet(tmp_path):
    fake = tmp_path / "fake.mp3"
    fake.write_text("hello, this is text\n" * 20)
    data = request(inputs={"audio": str(fake)})
    data.pop("duration")
    proc = cli("generate", "-", "--bundle", acestep_edge.DEMO_BUNDLE, "--progress", "none", "--out",
               tmp_path / "x.wav", stdin=json.dumps(data))
    error = json.loads(proc.stdout)["errors"][0]
    assert proc.returncode != 0 and error["parameter"] == "inputs.audio"
    assert "is not a readable audio file" in error["message"] and "pipe" not in error["message"]
    assert proc.stderr == ""  # no mpg123 "Note: ..." lines, no traceback


# 11. --provider cuda without a GPU ----------------------------------------------------------------

@pytest.mark.skipif(HAS_CUDA, reason="this ONNX Runtime has CUDA; the fallback cannot be provoked")
def test_cuda_without_a_gpu_prints_one_warning_line(tmp_path):
    proc = cli("generate", "-", "--bundle", acestep_edge.DEMO_BUNDLE, "--provider", "cuda", "--progress", "none",
               "--out", tmp_path / "x.wav", stdin=json.dumps(request()))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("warning: ") and "CPUExecutionProvider" in proc.stderr
    assert "[W:onnxruntime" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    assert json.loads(proc.stdout)["warnings"]  # the response still explains every graph


# 12. umask, Ctrl-C, no arguments, ignored outputs, README paths ---------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_files_follow_the_umask(tmp_path, umask):
    out = tmp_path / "u.wav"
    proc = cli("generate", "-", "--bundle", acestep_edge.DEMO_BUNDLE, "--progress", "none", "--out", out,
               stdin=json.dumps(request()), preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_ctrl_c_exits_130_and_writes_nothing(tmp_path):
    out = tmp_path / "long.wav"
    proc = subprocess.Popen([sys.executable, "-m", "acestep_edge.cli", "generate", "-", "--bundle",
                             str(acestep_edge.DEMO_BUNDLE), "--threads", "1", "--progress", "plain", "--out", str(out)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps(request(duration=600, steps=200)))
    proc.stdin.close()
    seen = ""
    deadline = time.monotonic() + 120
    while "DiT steps" not in seen and time.monotonic() < deadline and proc.poll() is None:  # mid-render
        seen += proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, seen + rest
    assert "interrupted" in rest and "Traceback" not in rest and "Aborted" not in rest
    assert not list(tmp_path.iterdir())  # no file, no temp file


def test_no_arguments_prints_help():
    proc = cli()
    assert proc.returncode == 0 and proc.stdout.startswith("Usage:") and "generate" in proc.stdout


def test_what_the_readme_writes_is_git_ignored_and_under_one_folder():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"/demo-output/", "/bench-results.jsonl", "/out/"} <= set(ignored)
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"acestep-edge generate .*?--out (\S+)", readme)
    assert targets and all(t.startswith(("out/", "/out/")) for t in targets), targets
