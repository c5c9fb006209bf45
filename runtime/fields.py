"""Generic readers of JSON request fields: number, integer, string, enum and object, with Runware errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .wire import RequestError, show


def field_error(param: str, message: str, code: str = "invalidParameter") -> RequestError:
    """A RequestError whose message starts with the field's name."""
    return RequestError(param, f"{param}: {message}", code)


def is_number(v: Any) -> bool:
    # An int is finite however long (math.isfinite would overflow converting a 309-digit one to float).
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))


def is_integral(v: Any) -> bool:
    # Compare without a float round trip: int(2**63 - 1) is not representable as a float.
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def number(obj: Mapping, key: str, param: str, lo: float, hi: float, default: Any = None,
           *, integer: bool = False, lo_open: bool = False, context: str = "") -> Any:
    """obj[key] as a float (or int) in [lo, hi] ((lo, hi] with lo_open); `default` when absent or null."""
    if obj.get(key) is None:
        return default
    v = obj[key]
    kind = "an integer" if integer else "a number"
    a, b = (int(lo), int(hi)) if integer else (f"{lo:g}", f"{hi:g}")
    bound = (f"greater than {a} and at most {b}" if lo_open else f"from {a} to {b}") + context
    if not is_number(v) or (integer and not is_integral(v)):
        raise field_error(param, f"expected {kind} {bound}, got {show(v)}", "invalidType")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise field_error(param, f"{show(v)} is out of range; use {kind} {bound}", "valueOutOfRange")
    return int(v) if integer else float(v)


def string(obj: Mapping, key: str, param: str, *, max_chars: int, required: bool = False,
           allow_empty: bool = True) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise field_error(param, f"is required; send a non-empty string of at most {max_chars} characters",
                              "missingParameter")
        return None
    if not isinstance(v, str):
        raise field_error(param, f"expected a string of at most {max_chars} characters, got {show(v)}",
                          "invalidType")
    if not allow_empty and not v.strip():
        raise field_error(param, f"must not be empty; send 1 to {max_chars} characters", "valueOutOfRange")
    if len(v) > max_chars:
        raise field_error(param, f"is {len(v)} characters long; the limit is {max_chars}", "valueOutOfRange")
    return v


def boolean(obj: Mapping, key: str, param: str, default: bool = False) -> bool:
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise field_error(param, f"expected true or false, got {show(v)}", "invalidType")
    return v


def choice(obj: Mapping, key: str, param: str, allowed: tuple[str, ...], default: Any = None) -> Any:
    """A case-insensitive enum: the canonical spelling from `allowed`."""
    if obj.get(key) is None:
        return default
    v = obj[key]
    match = [a for a in allowed if isinstance(v, str) and a.lower() == v.strip().lower()]
    if not match:
        raise field_error(param, f"{show(v)} is not allowed; use one of {', '.join(allowed)}", "invalidEnum")
    return match[0]


def choice_int(obj: Mapping, key: str, param: str, allowed: tuple[int, ...]) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if not is_number(v) or not is_integral(v) or int(v) not in allowed:
        raise field_error(param, f"{show(v)} is not allowed; use one of {', '.join(map(str, allowed))}",
                          "invalidEnum")
    return int(v)


def section(obj: Mapping, key: str, param: str, allowed_keys: tuple[str, ...]) -> Mapping:
    """A nested object (empty when absent) whose keys are all in `allowed_keys`."""
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise field_error(param, f"expected an object, got {show(v)}", "invalidType")
    reject_unknown(v, allowed_keys, prefix=f"{param}.")
    return v


def reject_unknown(obj: Mapping, allowed: tuple[str, ...], prefix: str = "") -> None:
    for key in obj:
        if key not in allowed:
            raise field_error(f"{prefix}{key}", f"unknown parameter; allowed here: {', '.join(allowed)}",
                              "unknownParameter")
