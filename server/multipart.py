"""The one multipart reader of every contract: Starlette's form parser (python-multipart) with limits.

Every refusal is a ``ServiceError``: ``FILE_TOO_LARGE`` naming the picture's field when the body
passes its byte cap (by Content-Length before a byte is read, else while it streams), and
``INVALID_PARAMETERS`` for a body that is not multipart, cannot be parsed, or has too many parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import Message, Receive

from .errors import ServiceError

# Room for the boundaries and part headers around a picture of the field's full byte limit.
FRAMING_BYTES = 64 * 1024
# The official imagepipeline client's boundary line is well inside this (RFC 2046: at most 70).
_SNIFF_BYTES = 200


@dataclass(frozen=True)
class FormLimits:
    max_files: int
    max_fields: int
    # Text fields only: Starlette spools files to disk, so files are bounded by the body cap.
    max_part_size: int = 1024 * 1024


# An upload endpoint takes one picture; a few text fields some clients add are tolerated.
UPLOAD_LIMITS = FormLimits(max_files=1, max_fields=8)


def too_large(field: str, max_bytes: int) -> ServiceError:
    return ServiceError("FILE_TOO_LARGE", f"{field} is over the {max_bytes} byte limit", field=field)


class _CappedReceive:
    """The request's ``receive``, counting body bytes, with a first look that is replayed."""

    def __init__(self, receive: Receive, cap: int | None, refuse: Callable[[], ServiceError]):
        self._receive = receive
        self._cap = cap
        self._refuse = refuse
        self._read = 0
        self._ended = False
        self._replay: list[Message] = []

    async def _pull(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._ended = True
        if message["type"] == "http.request":
            self._read += len(message.get("body", b""))
            if self._cap is not None and self._read > self._cap:
                raise self._refuse()
        return message

    async def drain(self) -> None:
        """Read the rest of the body (up to the cap) so an oversized body is refused as that,
        whatever else is wrong with it, as when the whole body was read before parsing."""
        while not self._ended:
            await self._pull()

    async def peek(self, size: int) -> bytes:
        head = b""
        while len(head) < size:
            message = await self._pull()
            self._replay.append(message)
            if message["type"] != "http.request":
                break
            head += message.get("body", b"")
            if not message.get("more_body", False):
                break
        return head

    async def __call__(self) -> Message:
        if self._replay:
            return self._replay.pop(0)
        return await self._pull()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _parse_error(exc: Exception, limits: FormLimits, blame: str | None) -> ServiceError:
    # Starlette words its limits in English only; anything unrecognised stays the generic refusal.
    detail = exc.detail if isinstance(exc, HTTPException) else ""
    detail = exc.message if isinstance(exc, MultiPartException) else detail
    detail = detail if isinstance(detail, str) else ""
    if detail.startswith("Too many files"):
        message = f"the multipart body has too many files: at most {limits.max_files}"
    elif detail.startswith("Too many fields"):
        message = f"the multipart body has too many fields: at most {limits.max_fields}"
    elif "exceeded maximum size" in detail:
        message = f"a multipart text field is over the {limits.max_part_size} byte limit"
    else:
        message = "the multipart body could not be parsed"
    return ServiceError("INVALID_PARAMETERS", message, field=blame)


@asynccontextmanager
async def open_form(
    request: Request,
    limits: FormLimits,
    *,
    field: str,
    max_bytes: int | None = None,
    blame: str | None = None,
) -> AsyncIterator[FormData]:
    """The parsed multipart body of ``request``, its spooled files closed on leaving.

    ``field`` is the picture's field, named when the body is over ``max_bytes`` plus framing
    (None: only the server-wide request cap applies); ``blame`` is the field named when the body
    as a whole is refused. A body declared as something else but starting with a boundary line is
    read as multipart: the official imagepipeline client (0.4.0) sends its upload with the
    session's ``Content-Type: application/json`` and no boundary.
    """
    cap = None if max_bytes is None else max_bytes + FRAMING_BYTES
    declared = request.headers.get("content-length", "")
    if cap is not None and declared.isdigit() and int(declared) > cap:
        raise too_large(field, max_bytes or 0)
    receive = _CappedReceive(request.receive, cap, lambda: too_large(field, max_bytes or 0))
    content_type = request.headers.get("content-type", "")
    if _media_type(request) != "multipart/form-data":
        first_line = (await receive.peek(_SNIFF_BYTES))[:_SNIFF_BYTES].split(b"\r\n", 1)[0]
        if not (first_line.startswith(b"--") and len(first_line) > 2):
            await receive.drain()
            raise ServiceError(
                "INVALID_PARAMETERS", f"send the picture as multipart field {field!r}", field=blame
            )
        content_type = f"multipart/form-data; boundary={first_line[2:].decode('latin-1')}"
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = dict(request.scope, headers=[*headers, (b"content-type", content_type.encode("latin-1"))])
    try:
        form = await Request(scope, receive).form(
            max_files=limits.max_files, max_fields=limits.max_fields, max_part_size=limits.max_part_size
        )
    except ServiceError:  # over our cap, or the request guard's, while being read
        raise
    except Exception as exc:
        await receive.drain()
        raise _parse_error(exc, limits, blame) from None
    try:
        yield form
    finally:
        await form.close()


async def read_file(form: FormData, field: str, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and filename of file field ``field``, refused by its size before it is read."""
    upload = form.get(field)
    if not isinstance(upload, UploadFile):
        raise ServiceError(
            "INVALID_PARAMETERS", f"multipart field {field!r} with a file is required", field=field
        )
    if upload.size is not None and upload.size > max_bytes:
        raise too_large(field, max_bytes)
    data = await upload.read()
    if len(data) > max_bytes:
        raise too_large(field, max_bytes)
    return data, upload.filename


async def read_upload(request: Request, field: str, max_bytes: int) -> tuple[bytes, str | None]:
    """The one picture of an upload endpoint's multipart field ``field``."""
    async with open_form(request, UPLOAD_LIMITS, field=field, max_bytes=max_bytes, blame=field) as form:
        return await read_file(form, field, max_bytes)
