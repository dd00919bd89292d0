"""Request-head limits of ``retouch serve``: too large or too many headers answer 431, not a reset.

uvicorn's h11 protocol answers every malformed head with a 400 and closes at once. A client still
sending its 1 MB header then meets a closed socket, its kernel sees a reset, and it never reads
the answer. Here the head limits are the server's own settings (``max_header_bytes``,
``max_header_count``), the answer is 431 Request Header Fields Too Large with a JSON body in the
primary contract's shape, and the connection is closed the way nginx's lingering close does it:
our side is shut for writing, and what the client still sends is read and dropped (bounded in
bytes and time) so that it gets to read the answer.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

LINGER_S = 2.0
LINGER_MAX_BYTES = 8 * 1024 * 1024


class _LimitedConnection(h11.Connection):
    """h11's connection with a cap on the number of header fields, remembering why it refused."""

    def __init__(self, *args, max_header_count: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_header_count = max_header_count
        self.refusal: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc
            raise
        if isinstance(event, h11.Request) and len(event.headers) > self.max_header_count:
            self.refusal = h11.RemoteProtocolError(
                f"more than {self.max_header_count} header fields", error_status_hint=431
            )
            raise self.refusal
        return event


def protocol_class(max_header_bytes: int, max_header_count: int) -> type[H11Protocol]:
    """An H11Protocol class (uvicorn's ``http=``) that keeps these limits."""

    class LimitedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.conn = _LimitedConnection(
                h11.SERVER, max_incomplete_event_size=max_header_bytes, max_header_count=max_header_count
            )
            self._lingering = False
            self._dropped = 0

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                self._dropped += len(data)
                if self._dropped > LINGER_MAX_BYTES:
                    self.transport.close()
                return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            refusal = self.conn.refusal
            status = refusal.error_status_hint if refusal is not None else 400
            if status == 431:
                body = {
                    "error": "request header fields too large",
                    "error_code": "HEADERS_TOO_LARGE",
                    "message": f"the request head is over this server's limits ({max_header_bytes} bytes,"
                    f" {max_header_count} header fields)",
                }
            else:
                body = {
                    "error": "bad request",
                    "error_code": "INVALID_REQUEST",
                    "message": "invalid HTTP request",
                }
            payload = json.dumps(body).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ]
            try:
                self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)))
                self.transport.write(self.conn.send(h11.Data(data=payload)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # our side is in no state to answer: just close
                self.transport.close()
                return
            self._lingering = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    return LimitedH11Protocol


def uvicorn_options(settings) -> dict:
    """What ``uvicorn.Config`` needs to keep the head limits of ``settings``."""
    return {
        "http": protocol_class(settings.max_header_bytes, settings.max_header_count),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
