"""Hostile input through HTTP: request caps, hostile pictures, sandboxed profile templates."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from benchmarks.reliability import record
from pipelines.images import decode_image
from server.errors import ServiceError
from tests.support.server_harness import AsgiServer, make_settings, png_bytes

PNG = png_bytes(40, 30)


# -- through HTTP --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = AsgiServer(
        make_settings(
            tmp_path_factory.mktemp("inputs"),
            workers=0,
            fetch_max_bytes=50_000,
            max_request_bytes=256 * 1024,
        )
    )
    yield srv
    srv.close()


def _data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def test_ssrf_over_http_is_a_clear_422(server):
    r = server.post("/edit/image/v1", json={"prompt": "x", "input_image": "http://169.254.169.254/latest/"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_code"] == "INPUT_URL_BLOCKED" and body["field"] == "input_image"


def test_request_caps_prompt_images_and_base64(server, monkeypatch):
    limit = server.app.state.core.registry.limits.max_prompt_chars
    r = server.post(
        "/edit/image/v1", json={"prompt": "p" * (limit + 1), "input_image": "http://10.9.9.9/x.png"}
    )
    assert r.status_code == 422 and r.json()["field"] == "prompt"  # refused before the URL is looked at
    ok = server.post("/edit/image/v1", json={"prompt": "p" * limit, "input_image": _data_url(PNG)})
    assert ok.status_code == 200
    r = server.post("/edit/image/v1", json={"prompt": "x", "input_image": [_data_url(PNG)] * 9})
    assert r.status_code == 422 and r.json()["field"] == "input_image"
    decoded = []
    import server.fetch as fetch_module

    real = fetch_module.base64.b64decode
    monkeypatch.setattr(fetch_module.base64, "b64decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    r = server.post("/edit/image/v1", json={"prompt": "x", "input_image": _data_url(b"\0" * 60_000)})
    assert r.status_code == 413 and r.json()["error_code"] == "FILE_TOO_LARGE"
    assert decoded == []  # refused by its encoded length, never decoded


@pytest.mark.parametrize(
    ("path", "status", "shape"),
    [
        ("/edit/image/v1", 413, lambda b: b["error_code"] == "PAYLOAD_TOO_LARGE"),
        # FASHN documents 400/401/404/429/500 only: its clients get a BadRequest
        ("/v1/run", 400, lambda b: set(b) == {"error", "message"} and "byte limit" in b["message"]),
        ("/v1/edit/image", 413, lambda b: b["error"] == "payload_too_large"),
        ("/v1/images/edits", 413, lambda b: set(b["error"]) >= {"message", "type", "code"}),
    ],
)
def test_oversized_body_is_refused_in_each_contracts_own_shape(server, path, status, shape):
    big = str(server.settings.max_request_bytes + 1)
    headers = {"X-API-Key": "k", "Content-Type": "application/json", "Content-Length": big}
    r = server.post(path, content=b"{}", headers=headers)
    assert r.status_code == status and shape(r.json()), r.text


def test_request_caps_body_413_before_it_is_read(server):
    limit = server.settings.max_request_bytes
    pulled = []

    async def body(chunks: int):
        for _ in range(chunks):
            pulled.append(1)
            yield b"x" * 16_384

    # Declared too large: refused before a single byte is read.
    r = server.post(
        "/edit/image/v1",
        content=body(200),
        headers={"X-API-Key": "k", "Content-Type": "application/json", "Content-Length": str(200 * 16_384)},
    )
    assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    declared_read = len(pulled)
    assert declared_read == 0
    # Chunked (no length): refused as soon as the count passes the limit, long before the end.
    pulled.clear()
    r = server.post(
        "/edit/image/v1", content=body(200), headers={"X-API-Key": "k", "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    chunked_read = len(pulled) * 16_384
    assert chunked_read <= limit + 16_384
    pulled.clear()
    r = server.post(
        "/upload/image/v1",
        content=body(200),
        headers={"X-API-Key": "k", "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 413 and "Traceback" not in r.text
    record(
        "body_caps",
        {
            "limit_bytes": limit,
            "bytes_read_declared_too_large": declared_read,
            "bytes_read_chunked": chunked_read,
            "bytes_sent_chunked": 200 * 16_384,
        },
    )


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _hostile_cases() -> dict[str, tuple[bytes, tuple[int, int] | None]]:
    """name -> (bytes, upright size when it must decode; None when it must be refused with a 4xx)."""
    base = Image.new("RGB", (60, 40), (200, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: the upright picture is 40x60
    frames = [Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    palette = Image.new("P", (30, 20), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    bomb = bytearray(_save(Image.new("1", (10, 10)), "PNG"))
    bomb[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")  # IHDR claims 10 GP
    gif_bomb = bytearray(_save(Image.new("P", (10, 10)), "GIF"))
    gif_bomb[6:10] = b"\xff\xff\xff\xff"
    return {
        "truncated_png": (PNG[: len(PNG) // 2], None),
        "truncated_jpeg": (_save(base, "JPEG")[:200], None),
        "corrupt_jpeg": (_save(base, "JPEG")[:20] + b"\x13" * 500, None),
        "random_bytes": (bytes(range(256)) * 4, None),
        "empty": (b"", None),
        "svg_text": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        "png_bomb_10_gigapixels": (bytes(bomb), None),
        "gif_bomb_65535_square": (bytes(gif_bomb), None),
        "over_pixel_cap": (png_bytes(1001, 1000), None),
        "cmyk_jpeg": (_save(base.convert("CMYK"), "JPEG"), (60, 40)),
        "png_16bit": (_save(Image.new("I;16", (60, 40), 40000), "PNG"), (60, 40)),
        "palette_transparency": (_save(palette, "PNG", transparency=0), (30, 20)),
        "rgba": (_save(Image.new("RGBA", (60, 40), (0, 0, 255, 90)), "PNG"), (60, 40)),
        "la": (_save(Image.new("LA", (60, 40), (90, 128)), "PNG"), (60, 40)),
        "one_bit": (_save(Image.new("1", (60, 40), 1), "PNG"), (60, 40)),
        "exif_rotated_jpeg": (_save(base, "JPEG", exif=exif), (40, 60)),
        "animated_gif": (_save(frames[0], "GIF", save_all=True, append_images=frames[1:]), (30, 20)),
        "animated_webp": (_save(frames[0], "WEBP", save_all=True, append_images=frames[1:]), (30, 20)),
        "tiff": (_save(base, "TIFF"), (60, 40)),
    }


def test_hostile_pictures_over_http(server):
    cases = _hostile_cases()
    five_xx, slowest = 0, 0.0
    for name, (data, upright) in cases.items():
        for how in ("upload", "edit"):
            started = time.perf_counter()
            if how == "upload":
                r = server.post(
                    "/upload/image/v1", files={"file": ("x.bin", data, "application/octet-stream")}
                )
            else:
                r = server.post("/edit/image/v1", json={"prompt": "x", "input_image": _data_url(data)})
            slowest = max(slowest, time.perf_counter() - started)
            five_xx += r.status_code >= 500
            assert "Traceback" not in r.text and "/tmp" not in r.text
            if upright is None:
                assert 400 <= r.status_code < 500, (name, how, r.status_code, r.text)
                assert r.json()["error_code"] in ("INVALID_IMAGE", "IMAGE_TOO_LARGE", "FILE_TOO_LARGE"), name
            else:
                assert r.status_code == 200, (name, how, r.text)
        if upright is not None:
            # What the engine gets from these bytes: upright, RGB, first frame.
            picture = decode_image(data, max_pixels=1_000_000)
            assert picture.mode == "RGB" and picture.size == upright, name
    assert five_xx == 0 and slowest < 5
    record(
        "hostile_pictures",
        {
            "cases": len(cases),
            "requests": 2 * len(cases),
            "http_5xx": five_xx,
            "slowest_s": round(slowest, 3),
        },
    )


TEMPLATE_ATTACKS = [
    "{{ user_prompt.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ user_prompt|attr('__class__') }}",
    "{{ '{0.__class__}'.format(user_prompt) }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os }}",
    "{% extends '/etc/hostname' %}",
    "{{ range(10**9)|list|length }}",
    "{{ 'x' * 10**9 }}",
    "{{ 9 ** 99999999 }}",
    "{% for i in range(99999) %}{% for j in range(99999) %}.{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% set x = [1] %}{{ x.append(2) }}",
    "{{ self }}",
    "{{ config }}",
    "{{ user_prompt|replace('', user_prompt)|replace('', user_prompt) }}",
]


def test_profile_templates_are_sandboxed(server):
    from server.contracts.imagepipeline.profiles import render_template

    started = time.perf_counter()
    for template in TEMPLATE_ATTACKS:
        with pytest.raises(ServiceError) as err:
            render_template(template, "a hat")
        assert err.value.code == "INVALID_PARAMETERS" and err.value.field == "prompt_template", template
        r = server.post("/profiles/v1", json={"name": "evil", "prompt_template": template})
        assert r.status_code == 422 and r.json()["field"] == "prompt_template", (template, r.text)
    seconds = time.perf_counter() - started
    assert seconds < 5  # each refusal is immediate: nothing was run
    # What templates are for still works.
    assert render_template("{{ user_prompt }}, studio light", "a hat") == "a hat, studio light"
    assert (
        render_template("{% if user_prompt|length > 3 %}{{ user_prompt|upper }}{% endif %}", "a hat")
        == "A HAT"
    )
    record(
        "templates",
        {
            "escape_attempts": len(TEMPLATE_ATTACKS),
            "refused_422": len(TEMPLATE_ATTACKS),
            "seconds_for_all": round(seconds, 3),
        },
    )
