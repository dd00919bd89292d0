"""Fetching input pictures named by URL: http(s) with size and time limits, and ``data:`` URLs.

Kept in one module so an SSRF-hardened fetcher (private-range blocking, pinned DNS) can replace
it without touching the contracts.
"""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import unquote_to_bytes

import httpx

from .errors import ServiceError


def _fail(what: str, reason: str) -> ServiceError:
    return ServiceError("INPUT_FETCH_FAILED", f"{what} could not be fetched: {reason}", field=what)


def decode_data_url(url: str, *, max_bytes: int, what: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ServiceError("INVALID_PARAMETERS", f"{what} is a malformed data: URL (no comma)", field=what)
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if header.endswith(";base64")
            else unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raise ServiceError(
            "INVALID_PARAMETERS", f"{what} is a data: URL with invalid base64", field=what
        ) from None
    if len(data) > max_bytes:
        raise ServiceError("FILE_TOO_LARGE", f"{what} is over the {max_bytes} byte limit", field=what)
    return data


def fetch_url(url: str, *, max_bytes: int, timeout_s: float, what: str) -> bytes:
    """GET ``url``, refusing bodies over ``max_bytes`` and transfers over ``timeout_s`` in total."""
    if url.startswith("data:"):
        return decode_data_url(url, max_bytes=max_bytes, what=what)
    if not url.startswith(("http://", "https://")):
        raise ServiceError("INVALID_PARAMETERS", f"{what} must be an http(s) or data: URL", field=what)
    deadline = time.monotonic() + timeout_s
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=True, max_redirects=5) as client,
            client.stream("GET", url) as resp,
        ):
            if resp.status_code != 200:
                raise _fail(what, f"the server answered HTTP {resp.status_code}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ServiceError("FILE_TOO_LARGE", f"{what} is over the {max_bytes} byte limit", field=what)
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ServiceError(
                        "FILE_TOO_LARGE", f"{what} is over the {max_bytes} byte limit", field=what
                    )
                if time.monotonic() > deadline:
                    raise _fail(what, f"the download took longer than {timeout_s:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise _fail(what, f"no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise _fail(what, type(exc).__name__) from None
