"""The one JSON reader of every contract: strict, so any body is a clear 4xx and never a 500.

Python's ``json`` accepts what RFC 8259 does not (NaN, Infinity), lets the last of duplicate keys
win, and fails in ways that are not ``ValueError`` (``RecursionError`` on deep nesting,
``UnicodeDecodeError`` on bad bytes). Each of those is refused here with a message naming
the problem. Duplicate keys are refused rather than resolved: two parsers (a proxy's and ours) must
never disagree about what a request asked for.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ServiceError

# Far more digits than any field takes (seeds are 32-bit); Python refuses > 4300 with a ValueError.
_MAX_INT_DIGITS = 64
_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


class _Refused(Exception):
    """A problem found while decoding; becomes the ServiceError of the caller's field."""


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Refused(f"the key {duplicate!r} appears more than once in the JSON body")
    return obj


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _Refused(f"a number with {len(text)} digits is out of range")
    return int(text)


def _constant(name: str):
    raise _Refused(f"{name} is not a JSON number; send a finite number")


def parse_json_object(raw: bytes, *, field: str | None = "body") -> dict:
    """The JSON object in ``raw``; anything else is a ServiceError (INVALID_PARAMETERS) on ``field``."""

    def refuse(message: str) -> ServiceError:
        return ServiceError("INVALID_PARAMETERS", message, field=field)

    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise refuse(f"the body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise refuse("the body is empty; send a JSON object")
    try:
        value = json.loads(
            text, object_pairs_hook=_object, parse_float=_float, parse_int=_int, parse_constant=_constant
        )
    except _Refused as exc:
        raise refuse(str(exc)) from None
    except RecursionError:
        raise refuse("the JSON body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise refuse(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError:
        raise refuse("the body is not valid JSON") from None
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "a number")
        raise refuse(f"the body must be a JSON object, not {kind}")
    return value
