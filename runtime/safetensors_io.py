"""Read a .safetensors file into numpy without torch: the 8-byte header length, the JSON header, raw tensors.

The format (huggingface/safetensors, docs "Format"): little-endian u64 N, N bytes of JSON mapping
each tensor name to {dtype, shape, data_offsets} (plus an optional "__metadata__" of strings), then
the byte buffer. BF16 has no numpy dtype: its 16 bits are the top half of a float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
MAX_HEADER = 100 * 2**20


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file; the message says what is wrong."""


def read_header(path: str | Path) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, byte offset of the data) of a safetensors file."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise SafetensorsError(f"{path.name} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > MAX_HEADER:
            raise SafetensorsError(f"{path.name} is not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SafetensorsError(f"{path.name} has an unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name} has an unreadable safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + n


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a safetensors file as float32/integer numpy arrays, and its metadata."""
    path = Path(path)
    header, metadata, start = read_header(path)
    size = path.stat().st_size
    buffer = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (lo, hi) = entry["dtype"], [int(s) for s in entry["shape"]], entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"{path.name}: tensor {name!r} has a malformed header entry") from exc
        if not 0 <= lo <= hi or start + hi > size:
            raise SafetensorsError(f"{path.name}: tensor {name!r} lies outside the file (truncated?)")
        raw = buffer[start + lo:start + hi]
        count = int(np.prod(shape)) if shape else 1
        if dtype == "BF16":
            if raw.size != 2 * count:
                raise SafetensorsError(f"{path.name}: tensor {name!r} has {raw.size} bytes for shape {shape}")
            array = (np.frombuffer(raw.tobytes(), np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            np_type = np.dtype(_DTYPES[dtype])
            if raw.size != np_type.itemsize * count:
                raise SafetensorsError(f"{path.name}: tensor {name!r} has {raw.size} bytes for shape {shape}")
            array = np.frombuffer(raw.tobytes(), np_type)
        else:
            raise SafetensorsError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype}")
        array = array.reshape(shape)
        tensors[name] = array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array
    return tensors, {str(k): str(v) for k, v in metadata.items()}
