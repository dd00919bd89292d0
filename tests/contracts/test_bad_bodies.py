"""Malformed bodies and oversized headers: always a 4xx in the contract's own error shape, never 500.

Every body of the corpus goes to every JSON and multipart endpoint of every contract, in process;
the header limits are answered by the HTTP layer, so they are tried against a real ``retouch serve``.
"""

from __future__ import annotations

import socket
import time

import pytest

from benchmarks.reliability import record
from tests.support.server_harness import AsgiServer, ServeProcess, free_port, make_settings, write_weights

_DEEP = 100_000
_MULTIPART_BODY = b'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nred\r\n--XyZ--\r\n'

# name -> (body, content type or None for none at all)
CORPUS: dict[str, tuple[bytes, str | None]] = {
    "invalid_utf8": (b'{"prompt": "caf\xe9 \xff\xfe"}', "application/json"),
    "deep_arrays": (b'{"prompt": ' + b"[" * _DEEP + b"]" * _DEEP + b"}", "application/json"),
    "deep_objects": (b'{"a": ' * _DEEP + b"1" + b"}" * _DEEP, "application/json"),
    "number_1e400": (b'{"prompt": "x", "seed": 1e400, "guidance_scale": 1e400}', "application/json"),
    "huge_integer": (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "application/json"),
    "nan_literal": (b'{"prompt": "x", "guidance_scale": NaN}', "application/json"),
    "infinity_literal": (b'{"prompt": "x", "guidance_scale": Infinity}', "application/json"),
    "minus_infinity_literal": (b'{"prompt": "x", "guidance_scale": -Infinity}', "application/json"),
    "lone_surrogate": (b'{"name": "\\ud800", "prompt": "\\udfff x"}', "application/json"),
    "top_level_array": (b'[{"prompt": "x"}]', "application/json"),
    "top_level_string": (b'"make it red"', "application/json"),
    "top_level_null": (b"null", "application/json"),
    "wrong_content_type": (b'{"prompt": "x"}', "text/plain"),
    "missing_content_type": (b'{"prompt": "x"}', None),
    "duplicate_keys": (b'{"prompt": "a", "prompt": "b"}', "application/json"),
    "truncated": (b'{"prompt": "make it', "application/json"),
    "empty": (b"", "application/json"),
    "multipart_no_boundary": (_MULTIPART_BODY, "multipart/form-data"),
    "multipart_truncated": (_MULTIPART_BODY[:40], "multipart/form-data; boundary=XyZ"),
    "multipart_wrong_boundary": (_MULTIPART_BODY, "multipart/form-data; boundary=other"),
}

# (contract, path): every endpoint that reads a JSON or multipart body
ENDPOINTS = [
    ("imagepipeline", "/edit/image/v1"),
    ("imagepipeline", "/profiles/v1"),
    ("imagepipeline", "/upload/image/v1"),
    ("fashn", "/v1/run"),
    ("depicta", "/v1/edit/image"),
    ("depicta", "/v1/upload"),
    ("openai", "/v1/images/edits"),
]


def in_contract_shape(contract: str, body) -> bool:
    """Whether ``body`` is the error body of ``contract`` (what its official client parses)."""
    if not isinstance(body, dict):
        return False
    if contract == "imagepipeline":
        return all(isinstance(body.get(k), str) for k in ("error", "error_code", "message"))
    if contract in ("fashn", "depicta"):
        return isinstance(body.get("error"), str) and isinstance(body.get("message"), str)
    error = body.get("error")
    return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = AsgiServer(make_settings(tmp_path_factory.mktemp("bodies"), workers=0))
    yield srv
    srv.close()


def test_malformed_bodies_get_a_4xx_in_each_contracts_shape(server):
    wrong: list[str] = []
    statuses: list[int] = []
    for contract, path in ENDPOINTS:
        for name, (body, content_type) in CORPUS.items():
            headers = {"X-API-Key": "test-key", "Authorization": "Bearer test-key"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            r = server.post(path, content=body, headers=headers)
            statuses.append(r.status_code)
            try:
                parsed = r.json()
            except ValueError:
                parsed = None
            if not (400 <= r.status_code < 500 and in_contract_shape(contract, parsed)):
                wrong.append(f"{contract} {path} {name}: {r.status_code} {r.text[:120]}")
            elif "Traceback" in r.text or "/work/" in r.text or "site-packages" in r.text:
                wrong.append(f"{contract} {path} {name}: leaks internals: {r.text[:120]}")
    assert not wrong, "\n".join(wrong)
    record(
        "malformed_bodies",
        {
            "bodies": len(CORPUS),
            "endpoints": len(ENDPOINTS),
            "requests": len(CORPUS) * len(ENDPOINTS),
            "http_5xx": sum(s >= 500 for s in statuses),
            "statuses": ",".join(str(s) for s in sorted(set(statuses))),
        },
    )


def test_json_body_problems_are_named_in_the_message(server):
    """A client can tell what to fix from the message alone."""
    expected = {
        "invalid_utf8": "UTF-8",
        "deep_arrays": "nested",
        "number_1e400": "out of range",
        "nan_literal": "NaN",
        "duplicate_keys": "prompt",
        "top_level_array": "JSON object",
        "truncated": "not valid JSON",
    }
    for name, needle in expected.items():
        body, content_type = CORPUS[name]
        for path in ("/edit/image/v1", "/v1/run"):
            r = server.post(path, content=body, headers={"X-API-Key": "k", "Content-Type": content_type})
            assert needle in r.json()["message"], (name, path, r.text)


# -- header limits, on a real served process --------------------------------------------------------


def _raw_request(port: int, head: bytes) -> tuple[int | None, bytes]:
    """Send ``head`` (request line and headers) and read the answer; status None = connection reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return None, b""
    answer = b"".join(chunks)
    try:
        return int(answer.split(b" ", 2)[1]), answer
    except (IndexError, ValueError):
        return None, answer


def test_huge_headers_answer_431_not_a_reset(tmp_path, monkeypatch):
    monkeypatch.setenv("RETOUCH_ENGINE_FACTORY", "tests.support.fakes:FakeEngine")
    data = tmp_path / "data"
    data.mkdir()
    srv = ServeProcess(write_weights(tmp_path), data, free_port(), workers=0)
    try:
        srv.wait("/healthz", timeout=60)
        line = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        cases = {
            "one_1mb_header": line + b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n",
            "2000_headers": line + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n",
            "2000_long_headers": line
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(2000))
            + b"\r\n",
        }
        seen = {}
        started = time.monotonic()
        for name, head in cases.items():
            status, answer = _raw_request(srv.port, head)
            seen[name] = status
            if status == 431:
                assert b"error_code" in answer and b"HEADERS_TOO_LARGE" in answer
        elapsed = time.monotonic() - started
        ok_status, _ = _raw_request(srv.port, line + b"Connection: close\r\n\r\n")
    finally:
        srv.stop()
    assert seen == dict.fromkeys(cases, 431) and ok_status == 200
    record(
        "huge_headers",
        {
            **{f"{name}_status": s for name, s in seen.items()},
            "resets": sum(s is None for s in seen.values()),
            "seconds_for_all": round(elapsed, 2),
        },
    )
