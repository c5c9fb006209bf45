"""Audio I/O: atomic writers for WAV/FLAC/OGG/MP3, resampling (libsoxr), and source-audio loading."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .vocab import SAMPLE_RATE as MODEL_SAMPLE_RATE
from .wire import is_remote, remote_message

FORMATS = ("MP3", "WAV", "FLAC", "OGG")
LOSSY_FORMATS = ("MP3", "OGG")
MIME_TYPES = {"MP3": "audio/mpeg", "WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg"}
EXTENSIONS = {"MP3": "mp3", "WAV": "wav", "FLAC": "flac", "OGG": "ogg"}
# libsndfile format and default subtype per request format. WAV and FLAC are 16-bit PCM: what
# Runware delivers and what every player reads; pass subtype="FLOAT"/"PCM_24" for more.
_SF_FORMAT = {
    "MP3": ("MP3", "MPEG_LAYER_III"),
    "WAV": ("WAV", "PCM_16"),
    "FLAC": ("FLAC", "PCM_16"),
    "OGG": ("OGG", "VORBIS"),
}

# Sample rates a lossy output may use (Runware's table for ACE-Step models).
LOSSY_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
DEFAULT_BITRATE_KBPS = 192


def bitrate_limits(fmt: str, sample_rate: int, channels: int) -> tuple[int, int]:
    """(min, max) kbps accepted for a lossy format at this sample rate and channel count."""
    fmt = fmt.upper()
    if fmt == "MP3":
        # Runware's MP3 table, which is exactly the MPEG-1 / 2 / 2.5 bitrate range that
        # libsndfile's LAME encoder maps compression levels onto; independent of channels.
        if sample_rate >= 32000:
            return 32, 320
        if sample_rate >= 16000:
            return 8, 160
        return 8, 64
    if fmt == "OGG":
        # Runware publishes per-channel Vorbis limits; we hold its mono figures for <= 16 kHz and
        # approximate libvorbis's managed-bitrate ranges elsewhere (see write_audio: Vorbis is VBR).
        if sample_rate <= 8000:
            mono = (8, 40)
        elif sample_rate <= 12000:
            mono = (16, 48)
        elif sample_rate <= 24000:
            mono = (16, 96)
        elif sample_rate <= 32000:
            mono = (32, 128)
        else:
            mono = (32, 240)
        return (mono[0], mono[1]) if channels == 1 else (2 * mono[0], min(2 * mono[1], 500))
    raise ValueError(f"bitrate applies to lossy formats only ({', '.join(LOSSY_FORMATS)}), not {fmt!r}")


def default_bitrate(fmt: str, sample_rate: int, channels: int) -> int:
    lo, hi = bitrate_limits(fmt, sample_rate, channels)
    target = DEFAULT_BITRATE_KBPS if channels == 2 else DEFAULT_BITRATE_KBPS // 2
    return int(min(max(target, lo), hi))


class AudioError(ValueError):
    """An audio input could not be read or an output could not be encoded as asked."""


# ----------------------------------------------------------------------------- resampling


WRITE_BLOCK_FRAMES = 1 << 16


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of [channels, n] (or [n]) audio by the exact ratio sr_out/sr_in.

    libsoxr at its very-high-quality setting (linear phase, no delay); the output has
    ceil(n·sr_out/sr_in) samples per channel, the last one zero-padded when soxr rounds down.
    """
    import soxr

    if sr_in <= 0 or sr_out <= 0 or int(sr_in) != sr_in or int(sr_out) != sr_out:
        raise ValueError(f"sample rates must be positive integers, got {sr_in} → {sr_out}")
    x = np.asarray(audio, dtype=np.float32)
    squeeze = x.ndim == 1
    x = np.atleast_2d(x)
    if sr_in == sr_out:
        return np.array(x[0] if squeeze else x, dtype=np.float32)
    n_out = -(-x.shape[-1] * int(sr_out) // int(sr_in))
    y = soxr.resample(np.ascontiguousarray(x.T), int(sr_in), int(sr_out), quality="VHQ").T
    y = y[:, :n_out]
    if y.shape[-1] < n_out:
        y = np.pad(y, ((0, 0), (0, n_out - y.shape[-1])))
    y = np.ascontiguousarray(y, dtype=np.float32)
    return y[0] if squeeze else y


# ----------------------------------------------------------------------------- encoding


def _setting(settings: Any, name: str) -> Any:
    # A mapping uses Runware's keys (sampleRate); an AudioSettings object its snake_case fields.
    if settings is None:
        return None
    if isinstance(settings, Mapping):
        return settings.get(name)
    return getattr(settings, {"sampleRate": "sample_rate"}.get(name, name), None)


def _check_audio(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] not in (1, 2):
        raise AudioError(f"audio must be [channels, samples] with 1 or 2 channels, got shape {a.shape}")
    if a.shape[1] == 0:
        raise AudioError("audio is empty (0 samples); nothing to write")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise AudioError("audio contains NaN or Inf samples; refusing to write a corrupt file")
    return a


def _lossy_compression(fmt: str, sample_rate: int, channels: int, bitrate: int) -> float:
    """Map a kbps target onto libsndfile's compression level (0 = best, 1 = smallest)."""
    lo, hi = bitrate_limits(fmt, sample_rate, channels)
    if not lo <= bitrate <= hi:
        raise AudioError(
            f"bitrate {bitrate} kbps is outside {lo}–{hi} kbps for {fmt} at {sample_rate} Hz, "
            f"{channels} channel(s)"
        )
    if fmt == "MP3":
        # libsndfile (CBR): kbps = max − level·(max − min). Level 1.0 itself is refused, so cap.
        return min((hi - bitrate) / (hi - lo), 0.999)
    # Vorbis: libsndfile sets VBR quality q = 10·(1 − level). Nominal libvorbis stereo 44.1 kHz
    # bitrates for q0..q10, scaled by channels; the achieved bitrate is a VBR average.
    nominal = np.array([64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500], dtype=np.float64)
    nominal *= channels / 2.0
    q = float(np.interp(bitrate, nominal, np.arange(11.0)))
    return float(np.clip(1.0 - q / 10.0, 0.0, 1.0))


def prepare_audio(audio: np.ndarray, sample_rate: int, fmt: str, settings: Any = None
                  ) -> tuple[np.ndarray, int]:
    """Apply audioSettings (channels, sampleRate) and clip to [-1, 1]; returns ([n, ch], rate)."""
    a = _check_audio(audio)
    channels = _setting(settings, "channels") or a.shape[0]
    if channels not in (1, 2):
        raise AudioError(f"channels must be 1 or 2, got {channels!r}")
    if channels == 1 and a.shape[0] == 2:
        a = a.mean(axis=0, keepdims=True)
    elif channels == 2 and a.shape[0] == 1:
        a = np.repeat(a, 2, axis=0)
    out_rate = int(_setting(settings, "sampleRate") or sample_rate)
    if out_rate != sample_rate:
        a = resample(a, sample_rate, out_rate)
    # Clip ourselves: libsndfile's float→int conversion would otherwise wrap overshoots.
    return np.clip(a, -1.0, 1.0).T.copy(), out_rate


def encode_audio_bytes(audio: np.ndarray, sample_rate: int, fmt: str, settings: Any = None,
                       *, subtype: str | None = None) -> bytes:
    """Encode [channels, n] float audio to the bytes of a WAV/FLAC/OGG/MP3 file."""
    fmt = str(fmt).upper()
    if fmt not in FORMATS:
        raise AudioError(f"unknown audio format {fmt!r}; use one of {', '.join(FORMATS)}")
    data, rate = prepare_audio(audio, sample_rate, fmt, settings)
    sf_format, sf_subtype = _SF_FORMAT[fmt]
    kwargs: dict[str, Any] = {}
    if fmt in LOSSY_FORMATS:
        channels = data.shape[1]
        bitrate = _setting(settings, "bitrate") or default_bitrate(fmt, rate, channels)
        kwargs["compression_level"] = _lossy_compression(fmt, rate, channels, int(bitrate))
        if fmt == "MP3":
            kwargs["bitrate_mode"] = "CONSTANT"
    elif _setting(settings, "bitrate"):
        raise AudioError(f"bitrate applies to {' and '.join(LOSSY_FORMATS)} only, not {fmt}")
    buf = io.BytesIO()
    try:
        with sf.SoundFile(buf, "w", rate, data.shape[1], format=sf_format, subtype=subtype or sf_subtype,
                          **kwargs) as handle:
            # Blocks, not one call: libsndfile's Vorbis encoder crashes (SIGSEGV) when handed a few
            # minutes of audio in a single write.
            for start in range(0, data.shape[0], WRITE_BLOCK_FRAMES):
                handle.write(data[start:start + WRITE_BLOCK_FRAMES])
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"could not encode {fmt} at {rate} Hz: {exc}") from exc
    return buf.getvalue()


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """Write payload to path via a same-directory temp file, fsync and rename.

    Readers see either no file or the complete file; on any failure (including Ctrl-C) the temp
    file is removed and nothing is left behind.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise AudioError(f"output directory {str(directory)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".part")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file follows the umask like any other
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return target


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask sets it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not every platform lets a directory be opened (Windows).
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, fmt: str,
                settings: Any = None, *, subtype: str | None = None) -> Path:
    """Encode [channels, n] float32 audio and write it atomically; returns the path.

    `settings` is an AudioSettings-like object or mapping with optional sampleRate / bitrate
    (kbps) / channels. MP3 is constant bitrate (exact); OGG Vorbis is VBR aimed at the bitrate.
    """
    payload = encode_audio_bytes(audio, sample_rate, fmt, settings, subtype=subtype)
    return write_bytes_atomic(path, payload)


# ----------------------------------------------------------------------------- reading

_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for the duration: decoder libraries write there directly."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:  # no fd 2 to silence (a daemon): nothing to do
            yield
            return
        try:
            sys.stderr.flush()  # what Python already wrote goes out before the descriptor moves
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _source_bytes_or_path(source: str | os.PathLike) -> bytes | Path:
    if isinstance(source, os.PathLike):
        return Path(source)
    if not isinstance(source, str) or not source:
        raise AudioError(f"audio source must be a non-empty path or URI string, got {source!r}")
    if source.startswith("data:"):
        header, sep, payload = source.partition(",")
        if not sep or not header.endswith(";base64"):
            raise AudioError("data URI must look like 'data:audio/<type>;base64,<data>'")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AudioError(f"data URI payload is not valid base64: {exc}") from exc
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path))
    if is_remote(source):
        raise AudioError(remote_message("audio"))
    return Path(source)


class AudioTooLong(AudioError):
    """The source is longer than the caller's limit (found from its header, before decoding it)."""

    def __init__(self, seconds: float, limit: float):
        super().__init__(f"the audio is {seconds:.1f} s long; the limit is {limit:g} s (trim it first)")
        self.seconds, self.limit = seconds, limit


def read_audio(source: str | os.PathLike, max_seconds: float | None = None) -> np.ndarray:
    """Load source audio (path, file:// URI or data URI) as [2, n] float32 at 48 kHz in [-1, 1].

    Mono is duplicated to stereo; files with more than two channels are refused (no downmix
    rule fits every layout: mix them to stereo first). Audio longer than `max_seconds` is refused
    from its header, so a long source is never decoded whole.
    """
    src = _source_bytes_or_path(source)
    try:
        if isinstance(src, Path) and not src.is_file():
            raise AudioError(f"audio file {str(src)[:200]!r} does not exist")
        with _quiet_stderr():  # libsndfile's mpg123 prints "Note: Illegal Audio-MPEG-Header ..." on fd 2
            if max_seconds is not None:
                info = sf.info(io.BytesIO(src) if isinstance(src, bytes) else str(src))
                if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
                    raise AudioTooLong(info.frames / info.samplerate, max_seconds)
            data, rate = sf.read(io.BytesIO(src) if isinstance(src, bytes) else str(src),
                                 dtype="float32", always_2d=True)
    except OSError as exc:  # a name too long, a folder, no permission: the client's path, not a server fault
        raise AudioError(f"cannot open audio file {str(src)[:200]!r}: {exc.strerror or exc}") from exc
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's own text ("... or is not a regular file (possibly a pipe?)") misleads: say what it is.
        where = "the data URI" if isinstance(src, bytes) else repr(str(src))
        raise AudioError(f"{where} is not a readable audio file (WAV, FLAC, OGG or MP3)") from exc
    if data.shape[0] == 0:
        raise AudioError("source audio has no samples")
    if data.shape[1] > 2:
        raise AudioError(f"source audio has {data.shape[1]} channels; send mono or stereo audio "
                         "(mix it down to stereo first)")
    a = data.T
    if a.shape[0] == 1:
        a = np.repeat(a, 2, axis=0)
    if rate != MODEL_SAMPLE_RATE:
        a = resample(a, rate, MODEL_SAMPLE_RATE)
    return np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0).astype(np.float32)
