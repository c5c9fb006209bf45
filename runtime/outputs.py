"""Where `acestep-edge generate` writes each result: decided, checked and its folders made before anything renders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .audio_io import EXTENSIONS
from .request import RequestError
from .response import new_audio_uuid

SUFFIX_FORMATS = {f".{ext}": fmt for fmt, ext in EXTENSIONS.items()}  # .wav → WAV, ...


def _named_file(out: str) -> bool:
    """`--out NAME.ext` with an audio extension (or an existing file) names a file; anything else a folder.

    A trailing slash always means a folder (kept by taking --out as a string: pathlib drops it).
    """
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        return False
    return path.suffix.lower() in SUFFIX_FORMATS or path.is_file()


def _out_format(out: str | None) -> str | None:
    """The format `--out NAME.ext` names, or None (a folder, or no audio extension)."""
    if out is None or not _named_file(out):
        return None
    return SUFFIX_FORMATS.get(Path(out).suffix.lower())


def apply_out_format(data, out: str | None) -> None:
    """`--out song.wav` sets outputFormat WAV on the raw requests that set none, before they are parsed
    (so audioSettings are judged against it); `check_out_format` refuses a request whose own format differs."""
    fmt = _out_format(out)
    for item in data if isinstance(data, list) else [data]:
        if fmt and isinstance(item, dict) and item.get("outputType", "URL") == "URL" and "outputFormat" not in item:
            item["outputFormat"] = fmt


def check_out_format(requests, out: str | None) -> None:
    """A request that writes a file in another format than `--out`'s extension is refused before rendering."""
    fmt = _out_format(out)
    for request in requests:
        if fmt and request.output_type == "URL" and request.output_format != fmt:
            raise RequestError("outputFormat", f"outputFormat {request.output_format} conflicts with --out {out} "
                               f"(a {fmt} file name): drop outputFormat, or name the file "
                               f".{EXTENSIONS[request.output_format]}", "conflictingParameters", request.task_uuid)


@dataclass
class OutputPlan:
    """One (audioUUID, path or None) per result, in render order; `prepare()` makes the folders."""

    results: list[list[tuple[str, Path | None]]]
    folders: list[Path] = field(default_factory=list)

    @classmethod
    def build(cls, requests, out_arg: str | None, save_latents: str | None = None) -> "OutputPlan":
        files = sum(r.number_results for r in requests if r.output_type == "URL")
        named = out_arg is not None and _named_file(out_arg)
        out = Path(out_arg) if out_arg is not None else None
        if out is not None and not named and out.suffix and not out_arg.endswith(("/", os.sep)) and not out.exists():
            raise RequestError("out", f"--out {out}: {out.suffix!r} is not an audio extension "
                               f"({', '.join(SUFFIX_FORMATS)}); to name a folder, end it with '/'",
                               "invalidOutputPath", requests[0].task_uuid)
        folder = Path.cwd() if out is None else (out.parent if named else out)
        results, n = [], 0
        for request in requests:
            row = []
            for _ in range(request.number_results):
                audio_uuid = new_audio_uuid()
                path = None
                if request.output_type == "URL":
                    n += 1
                    if not named:
                        path = folder / f"{audio_uuid}.{EXTENSIONS[request.output_format]}"
                    elif files == 1:
                        path = out
                    else:  # several results and one file name: song-1.wav, song-2.wav beside it
                        path = out.with_name(f"{out.stem}-{n}{out.suffix}")
                row.append((audio_uuid, path))
            results.append(row)
        folders = [folder] if files else []
        if save_latents:
            folders.append(Path(save_latents).parent)
        plan = cls(results, folders)
        plan._check(requests[0].task_uuid)
        return plan

    def _check(self, task_uuid: str | None) -> None:
        """Every target can be written: no folder where a file goes, and the nearest existing folder writable."""
        for row in self.results:
            for _, path in row:
                if path is not None and path.is_dir():
                    raise RequestError("out", f"--out: {path} is a folder, so the result cannot be written there",
                                       "invalidOutputPath", task_uuid)
        for folder in self.folders:
            existing = folder
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise RequestError("out", f"--out: cannot make the folder {folder}: {existing} is a file",
                                   "invalidOutputPath", task_uuid)
            if not os.access(existing, os.W_OK | os.X_OK):
                raise RequestError("out", f"--out: cannot write in {existing} (permission denied)",
                                   "invalidOutputPath", task_uuid)

    def prepare(self, task_uuid: str | None = None) -> None:
        """Make the missing output folders (after the checks and the bundle load, before any render)."""
        for folder in self.folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RequestError("out", f"--out: cannot make the folder {folder}: {exc.strerror}",
                                   "invalidOutputPath", task_uuid) from exc
