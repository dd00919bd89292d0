"""The Depicta contract (``/v1/upload``, synchronous ``/v1/edit/image``, ``/v1/jobs``).

In-process ASGI tests (fake engine in a real worker) cover the translation and every documented
error in Depicta's own shape; the end-to-end tests run the official ``depicta`` CLI as a
subprocess against a real ``retouch serve`` on tiny weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from pipelines.images import is_ai_marked
from server.auth import KeysFile
from tests.support.server_harness import AsgiServer, ServeProcess, make_settings, png_bytes
from tests.support.server_harness import free_port as _free_port

KEY = "depicta-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOB_HEADER = "x-depicta-job-id"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("depicta")
    settings = make_settings(
        tmp,
        api_keys=f"{KEY},broke-key,rich-key,other-key",
        key_budgets_usd={"broke-key": 0.0, "rich-key": 5.0},
        upload_max_bytes=200_000,
        eur_per_usd=0.5,
    )
    srv = AsgiServer(settings)
    srv.limited_key, _ = KeysFile(settings.keys_path).add("limited", ["edit"], rate_per_min=1)
    srv.wait_ready()
    yield srv
    srv.close()


def _local(server, url: str):
    """GET one of the server's absolute URLs in-process (no auth header: the signature is the key)."""
    parts = urlsplit(url)
    return server.get(f"{parts.path}?{parts.query}", headers={})


def _upload(server, data: bytes, headers=AUTH) -> dict:
    resp = server.post("/v1/upload", files={"image": ("photo.png", data, "image/png")}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _edit(server, headers=AUTH, **body):
    return server.post("/v1/edit/image", json=body, headers=headers)


def _assert_error(resp, status: int, code: str, word: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert {"error", "message"} <= set(body) <= {"error", "message", "details"}, body
    assert body["error"] == code, body
    if word:
        assert word in body["message"], body
    assert "Traceback" not in resp.text and "/tmp" not in resp.text
    return body


def _owner(server, key: str) -> str:
    return server.app.state.core.authenticate(key)


def test_depicta_upload_then_synchronous_edit(server):
    up = _upload(server, png_bytes(64, 48))
    assert up["size_bytes"] > 0 and up["content_type"] == "image/png" and up["expires_at"].endswith("Z")
    ref = _upload(server, png_bytes(32, 32, (0, 0, 255)))
    resp = _edit(
        server,
        prompt="put the blue hat on the person",
        input_image_url=up["upload_url"],
        reference_images=[{"url": ref["upload_url"], "description": "a blue hat"}],
        image_size="2K",
        aspect_ratio="16:9",
        strictness="liberal",
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # Sent with the answer, so a client can come back for the result by id.
    assert resp.headers[JOB_HEADER] == body["id"]
    assert body["ai_generated"] is True and body["model"]
    assert float(body["cost_eur"]) == 0 and "balance_eur" not in body  # this key has no budget
    assert set(body["formats"]) == {"png", "jpeg", "webp"}
    for fmt, variant in body["formats"].items():
        got = _local(server, variant["url"])
        assert got.status_code == 200, got.text
        assert hashlib.sha256(got.content).hexdigest() == variant["hash"]
        assert len(got.content) == variant["size_bytes"] and variant["format"] == fmt
        assert (
            Image.open(io.BytesIO(got.content)).format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        )
        if fmt != "png":  # the fake engine's PNG is unmarked; the variants derived from it carry the mark
            assert is_ai_marked(got.content)
        expires = datetime.fromisoformat(variant["expires_at"].replace("Z", "+00:00"))
        assert 3500 < (expires - datetime.now(UTC)).total_seconds() <= 3600
    assert body["image_url"] == body["formats"]["png"]["url"]
    assert body["image_hash"] == body["formats"]["png"]["hash"]

    record = server.app.state.core.store.get_job(body["id"])
    assert record.job.params.resolution == "2k" and record.job.params.aspect_ratio == "16:9"
    assert [r.description for r in record.job.references] == ["a blue hat"]
    assert record.meta.options["strictness"] == "liberal"  # recorded: no moderation model is configured


def test_depicta_multipart_edit_as_in_the_hosted_docs(server):
    resp = server.post(
        "/v1/edit/image",
        files={"image": ("photo.png", png_bytes(40, 30), "image/png")},
        data={"prompt": "make it warmer", "image_size": "1k"},
        headers=AUTH,
    )
    assert resp.status_code == 200, resp.text
    png = _local(server, resp.json()["image_url"])
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    bad = server.post(
        "/v1/edit/image",
        files={"image": ("photo.png", png_bytes(), "image/png")},
        data={"prompt": "x", "colour": "red"},
        headers=AUTH,
    )
    _assert_error(bad, 422, "validation_error", "colour")
    missing = server.post("/v1/edit/image", data={"prompt": "x"}, files={"other": ("a", b"b")}, headers=AUTH)
    _assert_error(missing, 422, "validation_error")


def test_depicta_jobs_list_and_recovery(server):
    up = _upload(server, png_bytes())
    done = _edit(server, prompt="recover me", input_image_url=up["upload_url"])
    job_id = done.headers[JOB_HEADER]
    # A job of another contract, and one of another key, are not listed.
    other_contract = server.post(
        "/edit/image/v1", json={"prompt": "x", "input_image": up["upload_url"]}, headers={"X-API-Key": KEY}
    ).json()["job_id"]
    _edit(server, headers={"Authorization": "Bearer other-key"}, prompt="x", input_image_url=up["upload_url"])

    listed = server.get("/v1/jobs", headers=AUTH).json()["generations"]
    ids = [g["job_id"] for g in listed]
    assert job_id in ids and other_contract not in ids
    entry = listed[ids.index(job_id)]
    assert entry["status"] == "completed" and entry["created_at"].endswith("Z") and entry["image_url"]
    assert len(server.get("/v1/jobs?limit=1", headers=AUTH).json()["generations"]) == 1

    detail = server.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert detail["job_id"] == job_id and detail["status"] == "completed"
    # Where the CLI's lost-response recovery looks: formats at the top level, and the same body as result.
    assert detail["formats"]["png"]["hash"] == done.json()["image_hash"] == detail["result"]["image_hash"]
    assert _local(server, detail["formats"]["webp"]["url"]).status_code == 200


def test_depicta_balance_is_reported_for_keys_with_a_budget(server):
    up = _upload(server, png_bytes(), headers={"Authorization": "Bearer rich-key"})
    resp = _edit(
        server, headers={"Authorization": "Bearer rich-key"}, prompt="x", input_image_url=up["upload_url"]
    )
    # a 5.00 USD budget at the configured 0.5 EUR per USD
    assert resp.status_code == 200 and float(resp.json()["balance_eur"]) == 2.5


def test_depicta_unauthorized_is_401(server):
    _assert_error(server.get("/v1/jobs", headers={}), 401, "authentication_error")
    _assert_error(
        _edit(server, headers={"Authorization": "Bearer nope"}, prompt="x"), 401, "authentication_error"
    )
    _assert_error(
        server.post("/v1/upload", files={"image": ("a.png", png_bytes())}, headers={}),
        401,
        "authentication_error",
    )


def test_depicta_spent_budget_is_402(server):
    broke = {"Authorization": "Bearer broke-key"}
    up = _upload(server, png_bytes(), headers=broke)
    _assert_error(
        _edit(server, headers=broke, prompt="x", input_image_url=up["upload_url"]),
        402,
        "insufficient_credits",
    )


def test_depicta_unknown_job_is_404(server):
    _assert_error(server.get("/v1/jobs/job_nope", headers=AUTH), 404, "not_found")
    up = _upload(server, png_bytes())
    theirs = _edit(
        server, headers={"Authorization": "Bearer other-key"}, prompt="x", input_image_url=up["upload_url"]
    )
    _assert_error(server.get(f"/v1/jobs/{theirs.headers[JOB_HEADER]}", headers=AUTH), 404, "not_found")
    ip_job = server.post(
        "/edit/image/v1", json={"prompt": "x", "input_image": up["upload_url"]}, headers={"X-API-Key": KEY}
    ).json()["job_id"]
    _assert_error(server.get(f"/v1/jobs/{ip_job}", headers=AUTH), 404, "not_found")


def test_depicta_job_cancelled_while_waiting_is_409(server):
    up = _upload(server, png_bytes())
    answer: dict = {}
    waiting = threading.Thread(
        target=lambda: answer.update(resp=_edit(server, prompt="slow edit", input_image_url=up["upload_url"]))
    )
    waiting.start()
    core = server.app.state.core
    deadline = time.monotonic() + 10
    while True:
        listed = server.get("/v1/jobs", headers=AUTH).json()["generations"]
        running = [g for g in listed if g["status"] in ("queued", "processing")]
        if running:
            break
        assert time.monotonic() < deadline, "the edit never showed up in /v1/jobs"
        time.sleep(0.05)
    core.cancel(running[0]["job_id"], _owner(server, KEY))
    waiting.join(30)
    resp = answer["resp"]
    _assert_error(resp, 409, "conflict", "cancelled")
    assert resp.headers[JOB_HEADER] == running[0]["job_id"]


def test_depicta_idempotency_key_replays_and_conflicts(server):
    url = _upload(server, png_bytes())["upload_url"]
    headers = {**AUTH, "Idempotency-Key": "depicta-idem-1"}
    first = _edit(server, headers=headers, prompt="same request", input_image_url=url)
    again = _edit(server, headers=headers, prompt="same request", input_image_url=url)
    assert again.status_code == 200 and again.headers[JOB_HEADER] == first.headers[JOB_HEADER]
    assert again.json()["image_hash"] == first.json()["image_hash"]
    other = _edit(server, headers=headers, prompt="another request", input_image_url=url)
    _assert_error(other, 409, "conflict", "Idempotency-Key")


def test_depicta_too_large_is_413(server):
    big = png_bytes(2000, 2000, (1, 2, 3)) + os.urandom(250_000)
    _assert_error(
        server.post("/v1/upload", files={"image": ("big.png", big)}, headers=AUTH), 413, "payload_too_large"
    )
    multipart = server.post(
        "/v1/edit/image", files={"image": ("big.png", big)}, data={"prompt": "x"}, headers=AUTH
    )
    _assert_error(multipart, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input_image_url": "UP"}, "prompt"),
        ({"prompt": "x"}, "input_image_url"),
        ({"prompt": "x", "input_image_url": "UP", "image_size": "8K"}, "image_size"),
        ({"prompt": "x", "input_image_url": "UP", "strictness": "lax"}, "strictness"),
        ({"prompt": "x", "input_image_url": "UP", "model": "dall-e-9"}, "model"),
        ({"prompt": "x", "input_image_url": "UP", "aspect_ratio": "wide"}, "aspect_ratio"),
        ({"prompt": "x", "input_image_url": "UP", "colour": "red"}, "colour"),
        (
            {"prompt": "x", "input_image_url": "UP", "reference_images": [{"url": "UP"}] * 6},
            "reference_images",
        ),
        (
            {"prompt": "x", "input_image_url": "UP", "reference_images": [{"url": "nope"}]},
            "reference_images[0].url",
        ),
        ({"prompt": "x", "input_image_url": "ftp://example.com/a.png"}, "input_image_url"),
    ],
)
def test_depicta_invalid_requests_are_422_with_details(server, body, field):
    url = _upload(server, png_bytes())["upload_url"]
    body = {k: url if v == "UP" else v for k, v in body.items()}
    if "reference_images" in body:
        body["reference_images"] = [
            {"url": url if r["url"] == "UP" else r["url"]} for r in body["reference_images"]
        ]
    error = _assert_error(_edit(server, **body), 422, "validation_error", field)
    assert any(field in key for key in error["details"]), error


def test_depicta_invalid_json_and_tampered_urls(server):
    resp = server.post(
        "/v1/edit/image", content=b"{oops", headers={**AUTH, "Content-Type": "application/json"}
    )
    _assert_error(resp, 422, "validation_error", "JSON")
    up = _upload(server, png_bytes())
    done = _edit(server, prompt="x", input_image_url=up["upload_url"]).json()
    tampered = done["formats"]["webp"]["url"].replace("sig=", "sig=0")
    _assert_error(_local(server, tampered), 403, "forbidden")
    _assert_error(_edit(server, prompt="x", input_image_url=up["upload_url"] + "0"), 422, "validation_error")


def test_depicta_rate_limit_is_429_with_retry_after(server):
    limited = {"Authorization": f"Bearer {server.limited_key}"}
    url = _upload(server, png_bytes(), headers=limited)["upload_url"]
    assert _edit(server, headers=limited, prompt="x", input_image_url=url).status_code == 200
    resp = _edit(server, headers=limited, prompt="x", input_image_url=url)
    _assert_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) > 0


def test_depicta_failed_edit_keeps_the_job_id(server):
    url = _upload(server, png_bytes())["upload_url"]
    resp = _edit(server, prompt="oom now", input_image_url=url)
    _assert_error(resp, 503, "service_unavailable", "memory")
    detail = server.get(f"/v1/jobs/{resp.headers[JOB_HEADER]}", headers=AUTH).json()
    assert detail["status"] == "failed" and detail["error"]["error"] == "service_unavailable"


# -- end to end: the official CLI against `retouch serve` on tiny weights ----------------------------


@pytest.fixture(scope="module")
def serve(tiny_weights, tmp_path_factory):
    data = tmp_path_factory.mktemp("depicta-e2e") / "data"
    data.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RETOUCH_API_KEYS", KEY)
        srv = ServeProcess(tiny_weights, data, _free_port())
    srv.wait()
    yield srv
    srv.stop()


def _cli(serve, tmp_path: Path, *args: str, key: str = KEY) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("depicta")
    env = dict(
        os.environ,
        DEPICTA_API_URL=serve.base_url,
        DEPICTA_API_KEY=key,
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    return subprocess.run(
        [str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_depicta_e2e_cli_edit_with_reference(serve, tmp_path):
    Image.new("RGB", (96, 64), (200, 30, 30)).save(tmp_path / "photo.png")
    Image.new("RGB", (48, 48), (20, 20, 220)).save(tmp_path / "hat.png")
    run = _cli(
        serve,
        tmp_path,
        *("edit", "image", "photo.png", "give the person a blue hat"),
        *("--reference", "hat.png:a blue wool hat", "--output", "out.png", "--json"),
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    picture = (tmp_path / "out.png").read_bytes()
    # The downloaded picture is the one the response's hash names.
    assert hashlib.sha256(picture).hexdigest() == result["image_hash"]
    assert result["ai_generated"] is True and is_ai_marked(picture)
    assert Image.open(io.BytesIO(picture)).format == "PNG"

    job_id = (tmp_path / "config" / "depicta" / "last_job_id").read_text()
    listed = _cli(serve, tmp_path, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job_id in [g["job_id"] for g in json.loads(listed.stdout)]
    got = _cli(serve, tmp_path, "jobs", "get", job_id, "--json")
    detail = json.loads(got.stdout)
    assert detail["status"] == "completed" and detail["formats"]["png"]["hash"] == result["image_hash"]


def test_depicta_e2e_cli_webp_and_errors(serve, tmp_path):
    Image.new("RGB", (64, 64), (30, 160, 30)).save(tmp_path / "photo.png")
    run = _cli(
        serve,
        tmp_path,
        "edit",
        "image",
        "photo.png",
        "make it autumn",
        "-f",
        "webp",
        "-o",
        "o.webp",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    picture = (tmp_path / "o.webp").read_bytes()
    assert hashlib.sha256(picture).hexdigest() == json.loads(run.stdout)["image_hash"]
    assert Image.open(io.BytesIO(picture)).format == "WEBP"

    denied = _cli(serve, tmp_path, "edit", "image", "photo.png", "x", "--json", key="wrong")
    assert denied.returncode == 2 and json.loads(denied.stderr)["error"] == "authentication_error"
    invalid = _cli(serve, tmp_path, "edit", "image", "photo.png", "x", "--image-size", "8K", "--json")
    error = json.loads(invalid.stderr)
    assert (
        invalid.returncode == 1 and error["error"] == "validation_error" and "image_size" in error["details"]
    )
