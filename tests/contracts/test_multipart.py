"""The one multipart reader (server/multipart.py) as each contract's clients meet it, and the one
MIME table and bearer parser it sits next to."""

from __future__ import annotations

import pytest

from pipelines.mime import mime_for_name, sniff_mime
from server.auth import bearer_key
from tests.support.server_harness import AsgiServer, make_settings, png_bytes

LIMIT = 100_000
HEADERS = {"X-API-Key": "test-key", "Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = AsgiServer(make_settings(tmp_path_factory.mktemp("multipart"), workers=0, upload_max_bytes=LIMIT))
    yield srv
    srv.close()


def _two_pictures(name: str) -> list:
    return [(name, ("a.png", png_bytes(), "image/png")), (name, ("b.png", png_bytes(), "image/png"))]


def test_an_upload_with_two_pictures_is_refused_by_name(server):
    r = server.post("/upload/image/v1", files=_two_pictures("file"), headers=HEADERS)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_code"] == "INVALID_PARAMETERS" and "too many files" in body["message"]
    r = server.post("/v1/upload", files=_two_pictures("image"), headers=HEADERS)
    assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text
    assert "too many files" in r.json()["message"]


def test_a_depicta_form_edit_with_two_pictures_is_refused_by_name(server):
    r = server.post("/v1/edit/image", files=_two_pictures("image"), data={"prompt": "x"}, headers=HEADERS)
    assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text
    assert "at most 1" in r.json()["message"]


def test_an_openai_form_edit_with_very_many_files_is_a_400_in_openai_shape(server):
    files = [("image[]", (f"{i}.png", b"x", "image/png")) for i in range(65)]
    r = server.post("/v1/images/edits", files=files, data={"prompt": "x"}, headers=HEADERS)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_parameters" and "too many files" in err["message"]


def test_an_upload_declared_too_large_is_refused_before_it_is_read(server):
    pulled = []

    async def body():
        for _ in range(20):
            pulled.append(1)
            yield b"x" * 16_384

    declared = str(LIMIT + 64 * 1024 + 1)
    headers = {**HEADERS, "Content-Type": "multipart/form-data; boundary=x", "Content-Length": declared}
    r = server.post("/upload/image/v1", content=body(), headers=headers)
    assert r.status_code == 413 and r.json()["error_code"] == "FILE_TOO_LARGE", r.text
    assert pulled == []


def test_a_picture_over_the_upload_limit_is_413_naming_its_field(server):
    big = png_bytes() + b"\0" * LIMIT
    r = server.post("/upload/image/v1", files={"file": ("big.png", big, "image/png")}, headers=HEADERS)
    assert r.status_code == 413, r.text
    assert r.json()["error_code"] == "FILE_TOO_LARGE" and "file is over" in r.json()["message"]


def test_the_official_imagepipeline_upload_works_when_streamed_in_small_chunks(server):
    """imagepipeline 0.4.0's body labelled application/json, arriving a few bytes at a time."""
    boundary = "b0undary"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )

    async def body():
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    headers = {**HEADERS, "Content-Type": "application/json"}
    r = server.post("/upload/image/v1", content=body(), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "x.png" and r.json()["content_type"] == "image/png"


def test_an_upload_that_is_not_multipart_names_the_field(server):
    r = server.post(
        "/upload/image/v1", content=b'{"file": "x"}', headers={**HEADERS, "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETERS" and "multipart field 'file'" in r.json()["message"]


def test_one_mime_table():
    webp = b"RIFF\0\0\0\0WEBPVP8 "
    assert [sniff_mime(png_bytes()), sniff_mime(b"\xff\xd8\xff"), sniff_mime(webp)] == [
        "image/png",
        "image/jpeg",
        "image/webp",
    ]
    assert sniff_mime(b"GIF89a") == "image/gif"
    assert sniff_mime(b"RIFF\0\0\0\0WAVE") is None and sniff_mime(b"") is None
    assert mime_for_name("results/j/0.webp") == "image/webp" and mime_for_name("a/photo.jpg") is None


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer sk-1", "sk-1"),
        ("bearer  sk-1 ", "sk-1"),
        ("BEARER sk-1", "sk-1"),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic dXNlcjpwdw==", None),
        ("sk-1", None),
        ("", None),
        (None, None),
    ],
)
def test_one_bearer_parser(header, key):
    assert bearer_key(header) == key
