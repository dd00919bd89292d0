"""Fuzzing: the picture decoder (hypothesis) and every HTTP operation in /openapi.json (schemathesis).

Both are bounded (example counts, no deadline flakiness) so they fit in CI on every run.
"""

from __future__ import annotations

import io
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.reliability import record
from pipelines.errors import EngineError
from pipelines.images import decode_image
from tests.support.server_harness import AsgiServer, make_settings

MAX_PIXELS = 1_000_000


def _seeds() -> list[bytes]:
    img = Image.new("RGB", (24, 16), (10, 200, 30))
    out = []
    for fmt, kwargs in (("PNG", {}), ("JPEG", {}), ("WEBP", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kwargs)
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()
fuzz_stats = {"inputs": 0, "decoded": 0, "refused_cleanly": 0, "slowest_s": 0.0}


@st.composite
def hostile_bytes(draw) -> bytes:
    """Valid pictures with flipped bytes, cuts and splices, plus plain random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_bytes())
def _decode_never_escapes(data: bytes) -> None:
    started = time.perf_counter()
    fuzz_stats["inputs"] += 1
    try:
        picture = decode_image(data, max_pixels=MAX_PIXELS, what="input_image")
    except EngineError as exc:
        # The only way out: a coded, 4xx-mapped error naming the field, never a path.
        assert exc.code in ("INVALID_IMAGE", "IMAGE_TOO_LARGE") and exc.field == "input_image"
        assert "/" not in exc.message.replace("n/a", "")
        fuzz_stats["refused_cleanly"] += 1
    else:
        assert picture.mode == "RGB" and picture.width * picture.height <= MAX_PIXELS
        fuzz_stats["decoded"] += 1
    fuzz_stats["slowest_s"] = max(fuzz_stats["slowest_s"], time.perf_counter() - started)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow narrates the damage it skips over
def test_fuzz_decode_path():
    _decode_never_escapes()
    assert fuzz_stats["slowest_s"] < 2.0
    record(
        "fuzz",
        {
            "inputs": fuzz_stats["inputs"],
            "decoded_rgb": fuzz_stats["decoded"],
            "refused_4xx": fuzz_stats["refused_cleanly"],
            "unexpected_exceptions": 0,
            "slowest_ms": round(fuzz_stats["slowest_s"] * 1000, 2),
        },
    )


# /readyz answers 503 by design while no worker is up (this app runs none).
NOT_FUZZED = {"/readyz"}


def test_schemathesis_openapi(tmp_path):
    schemathesis = pytest.importorskip("schemathesis")

    # One worker with the fake engine: a request valid enough to be queued ends, so the synchronous
    # contracts (Depicta, OpenAI) answer instead of waiting out the fuzzer's 10 s read timeout.
    # The fuzzer runs its own app's lifespan, so the worker belongs to a second app on the same store.
    from server.app import create_app

    server = AsgiServer(make_settings(tmp_path, workers=1))
    server.wait_ready(timeout=120)
    try:
        _fuzz_operations(schemathesis, create_app(make_settings(tmp_path, workers=0)))
    finally:
        server.close()


def _fuzz_operations(schemathesis, app) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    counts = {"operations": 0, "requests": 0, "5xx": 0}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in NOT_FUZZED:
            continue
        counts["operations"] += 1

        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            case.headers = {**(case.headers or {}), "X-API-Key": "fuzz"}
            response = case.call()
            counts["requests"] += 1
            counts["5xx"] += response.status_code >= 500
            try:
                case.validate_response(
                    response,
                    checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
                )
            except BaseException as exc:  # FailureGroup is a BaseExceptionGroup
                failures.append(f"{case.operation.label} -> {response.status_code}: {str(exc)[:400]}")

        check()
    seconds = time.monotonic() - started
    record(
        "schemathesis",
        {**counts, "schema_violations": len(failures) - counts["5xx"], "seconds": round(seconds, 1)},
    )
    assert failures == [], "\n".join(failures[:10])
