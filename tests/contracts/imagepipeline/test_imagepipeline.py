"""In-process ASGI tests of the imagepipeline.io contract, with the fake engine in a real worker."""

from __future__ import annotations

import base64
import io
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.support.server_harness import BASE_URL, AsgiServer, make_settings, png_bytes


@pytest.fixture
def server(served):
    return served


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _upload(server, data: bytes, name: str = "photo.png") -> dict:
    r = server.post(
        "/upload/image/v1", files={"file": (name, data, "image/png")}, headers={"X-API-Key": "test-key"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def _edit(server, **body):
    return server.post("/edit/image/v1", json=body, headers={"X-API-Key": "test-key"})


def _assert_error(resp, status: int, code: str, field_word: str | None = None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"error", "error_code", "message"}
    assert body["error_code"] == code
    if field_word:
        assert field_word in body["message"]
    assert "Traceback" not in resp.text and "/tmp" not in resp.text


def test_server_health_and_ready(server):
    assert server.get("/healthz").json()["status"] == "ok"
    assert server.get("/readyz").status_code == 200


def test_server_upload_edit_status_download(server):
    up = _upload(server, png_bytes(64, 48))
    assert up["content_type"] == "image/png" and up["size_bytes"] > 0 and up["filename"] == "photo.png"
    assert up["url"].startswith(BASE_URL + "/files/uploads/")
    r = _edit(server, prompt="make it blue", input_image=up["url"], output_format="png", seed=7)
    assert r.status_code == 200, r.text
    sub = r.json()
    assert sub["status"] == "queued" and isinstance(sub["estimated_time_seconds"], int)
    st = server.wait_status(sub["job_id"])
    assert st["status"] == "completed", st
    assert st["progress"] == 100 and st["result_mime_type"] == "image/png" and st["seed"] == 7
    assert len(st["prompt_hash"]) == 64 and st["cost_usd"] == 0 and st["balance_remaining_usd"] is None
    for key in (
        "queue_wait_seconds",
        "inference_time_seconds",
        "total_elapsed_seconds",
        "processing_time_seconds",
    ):
        assert st[key] >= 0
    parts = urlsplit(st["result_url"])
    got = server.get(f"{parts.path}?{parts.query}")
    assert got.status_code == 200
    assert Image.open(io.BytesIO(got.content)).size == (64, 48)


def test_server_two_images_and_data_url(server):
    r = _edit(server, prompt="put 2 on 1", input_image=[_data_url(png_bytes()), _data_url(png_bytes(32, 32))])
    assert r.status_code == 200, r.text
    assert server.wait_status(r.json()["job_id"])["status"] == "completed"


def test_server_result_url_tampered_and_expired(server):
    up = _upload(server, png_bytes())
    path = urlsplit(up["url"]).path
    _assert_error(server.get(path), 403, "SIGNATURE_INVALID")
    _assert_error(server.get(path + "?expires=99999999999&sig=" + "0" * 64), 403, "SIGNATURE_INVALID")
    from server import signing

    expired = signing.sign(server.settings.signing_secret, "", path, -10)
    _assert_error(server.get(expired), 410, "URL_EXPIRED")


@pytest.mark.parametrize(
    ("body", "status", "code", "word"),
    [
        (
            {"prompt": "x", "input_image": "IMG", "mask_segment": "person"},
            422,
            "UNSUPPORTED_PARAMETER",
            "mask_segment",
        ),
        ({"prompt": "x", "input_image": "IMG", "mode": "pixelart"}, 422, "UNSUPPORTED_PARAMETER", "mode"),
        ({"prompt": "x", "input_image": "IMG", "server_id": "other"}, 421, "WRONG_SERVER", "server_id"),
        ({"prompt": "x", "input_image": "IMG", "bogus": 1}, 422, "INVALID_PARAMETERS", "bogus"),
        ({"prompt": "x", "input_image": "IMG", "width": 4096}, 422, "INVALID_PARAMETERS", "width"),
        ({"prompt": "x", "input_image": "IMG", "width": 1000}, 422, "INVALID_PARAMETERS", "width"),
        (
            {"prompt": "x", "input_image": "IMG", "guidance_scale": 30},
            422,
            "INVALID_PARAMETERS",
            "guidance_scale",
        ),
        (
            {"prompt": "x", "input_image": "IMG", "output_format": "gif"},
            422,
            "INVALID_PARAMETERS",
            "output_format",
        ),
        ({"prompt": "x"}, 422, "INVALID_PARAMETERS", "input_image"),
        ({"input_image": "IMG"}, 422, "INVALID_PARAMETERS", "prompt"),
        (
            {"prompt": "x", "input_image": "data:image/png;base64,bm90IGFuIGltYWdl"},
            422,
            "INVALID_IMAGE",
            "input_image",
        ),
        ({"prompt": "x", "input_image": "ftp://example.com/a.png"}, 422, "INVALID_PARAMETERS", "input_image"),
        (
            {"prompt": "x", "input_image": "http://127.0.0.1:9/a.png"},
            422,
            "INPUT_FETCH_FAILED",
            "input_image",
        ),
        (
            {"prompt": "x", "input_image": "IMG", "callback_url": "file:///etc/passwd"},
            422,
            "INVALID_PARAMETERS",
            "callback",
        ),
        ({"prompt": "x", "input_image": "IMG", "profile_id": "prof_missing"}, 404, "NOT_FOUND", "profile"),
        ({"prompt": "x", "input_image": ["IMG"] * 4}, 422, "INVALID_PARAMETERS", "input_image"),
    ],
)
def test_server_edit_rejects_bad_input(server, body, status, code, word):
    img = _data_url(png_bytes())
    if body.get("input_image") == "IMG":
        body = dict(body, input_image=img)
    elif isinstance(body.get("input_image"), list):
        body = dict(body, input_image=[img] * len(body["input_image"]))
    _assert_error(_edit(server, **body), status, code, word)


def test_server_too_many_pixels_is_422(server):
    _assert_error(
        _edit(server, prompt="x", input_image=_data_url(png_bytes(1200, 1000))), 422, "IMAGE_TOO_LARGE"
    )


def test_server_upload_errors(server):
    _assert_error(
        server.post("/upload/image/v1", files={"file": ("a.png", b"not a picture", "image/png")}),
        422,
        "INVALID_IMAGE",
    )
    _assert_error(
        server.post("/upload/image/v1", files={"other": ("a.png", png_bytes(), "image/png")}),
        422,
        "INVALID_PARAMETERS",
        "file",
    )


def test_server_upload_as_the_official_client_sends_it(server):
    """imagepipeline 0.4.0 labels its multipart body application/json; it must still work."""
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = server.post(
        "/upload/image/v1", content=body, headers={"X-API-Key": "k", "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "x.png"


def test_server_unknown_job_is_404(server):
    _assert_error(server.get("/edit/image/v1/status/job_nope"), 404, "NOT_FOUND")


def test_server_jobs_are_private_to_their_key(server):
    r = _edit(server, prompt="mine", input_image=_data_url(png_bytes()))
    other = server.get(f"/edit/image/v1/status/{r.json()['job_id']}", headers={"X-API-Key": "someone-else"})
    _assert_error(other, 404, "NOT_FOUND")


def test_server_engine_failure_is_reported(server):
    r = _edit(server, prompt="oom please", input_image=_data_url(png_bytes()))
    st = server.wait_status(r.json()["job_id"])
    assert st["status"] == "failed"
    assert st["failure_reason_code"] == "GPU_OUT_OF_MEMORY" and st["retryable"] is True and st["error"]


def test_server_cancel_running_job(server):
    r = _edit(server, prompt="slow job", input_image=_data_url(png_bytes()))
    job_id = r.json()["job_id"]
    st = server.wait_status(job_id, statuses=("processing",))
    assert st["progress"] >= 0
    assert server.post(f"/edit/image/v1/cancel/{job_id}").status_code == 200
    st = server.wait_status(job_id)
    assert st["status"] == "cancelled" and st["failure_reason_code"] == "CANCELLED"


def test_server_profiles_crud_and_use(server):
    r = server.post(
        "/profiles/v1",
        json={
            "name": "Brand",
            "prompt_template": "{{ user_prompt }}, studio light",
            "seed_strategy": "fixed",
            "fixed_seed": 42,
            "output_format": "jpeg",
        },
    )
    assert r.status_code == 200, r.text
    pid = r.json()["profile_id"]
    assert server.get(f"/profiles/v1/{pid}").json()["name"] == "Brand"
    assert pid in [p["profile_id"] for p in server.get("/profiles/v1").json()["profiles"]]
    job = _edit(
        server, prompt="a hat", input_image=_data_url(png_bytes()), profile_id=pid, output_format="webp"
    )
    st = server.wait_status(job.json()["job_id"])
    assert st["seed"] == 42 and st["result_mime_type"] == "image/jpeg"
    import hashlib

    assert st["prompt_hash"] == hashlib.sha256(b"a hat, studio light").hexdigest()
    assert server.request("DELETE", f"/profiles/v1/{pid}").status_code == 204
    _assert_error(server.get(f"/profiles/v1/{pid}"), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("template", "word"),
    [
        ("{{ user_prompt.__class__.__mro__ }}", "prompt_template"),
        ("{% for %}", "prompt_template"),
        ("{{ secret }}", "prompt_template"),
    ],
)
def test_server_profile_template_is_sandboxed(server, template, word):
    _assert_error(
        server.post("/profiles/v1", json={"name": "x", "prompt_template": template}),
        422,
        "INVALID_PARAMETERS",
        word,
    )


def test_server_profile_validation(server):
    _assert_error(
        server.post("/profiles/v1", json={"name": "x", "seed_strategy": "fixed"}),
        422,
        "INVALID_PARAMETERS",
        "fixed_seed",
    )
    _assert_error(
        server.post("/profiles/v1", json={"name": "x", "seed_strategy": "lucky"}),
        422,
        "INVALID_PARAMETERS",
        "seed_strategy",
    )


def test_server_api_keys_budget_and_queue_limit(tmp_path):
    settings = make_settings(
        tmp_path, workers=0, api_keys="good,broke", key_budgets_usd={"broke": 0.0}, max_queued_jobs=1
    )
    srv = AsgiServer(settings)
    try:
        img = _data_url(png_bytes())
        _assert_error(srv.get("/profiles/v1", headers={}), 401, "UNAUTHORIZED")
        _assert_error(srv.get("/profiles/v1", headers={"X-API-Key": "bad"}), 401, "UNAUTHORIZED")
        assert srv.get("/readyz").status_code == 503  # no worker
        r = srv.post(
            "/edit/image/v1", json={"prompt": "x", "input_image": img}, headers={"X-API-Key": "broke"}
        )
        _assert_error(r, 402, "INSUFFICIENT_BALANCE")
        ok = srv.post(
            "/edit/image/v1", json={"prompt": "x", "input_image": img}, headers={"X-API-Key": "good"}
        )
        assert ok.status_code == 200
        st = srv.get(f"/edit/image/v1/status/{ok.json()['job_id']}", headers={"X-API-Key": "good"}).json()
        assert st["status"] == "queued" and st["queue_position"] == 1 and st["estimated_time_seconds"] > 0
        full = srv.post(
            "/edit/image/v1", json={"prompt": "x", "input_image": img}, headers={"X-API-Key": "good"}
        )
        _assert_error(full, 503, "QUEUE_FULL")  # issue 5: a full queue is 503
        assert int(full.headers["Retry-After"]) > 0
        cancel = srv.post(f"/edit/image/v1/cancel/{ok.json()['job_id']}", headers={"X-API-Key": "good"})
        assert cancel.json()["status"] == "cancelled"
    finally:
        srv.close()


def test_openapi_documents_each_contract_with_its_own_error_bodies(server):
    spec = server.get("/openapi.json").json()
    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}
    tags = {tag for op in ops.values() for tag in op.get("tags", [])}
    assert {"imagepipeline", "fashn", "depicta", "openai"} <= tags
    submit = ops[("post", "/edit/image/v1")]["responses"]
    assert submit["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ImagePipelineErrorBody")
    assert {"401", "404", "429"} <= set(submit)
    upload = ops[("post", "/upload/image/v1")]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["file"]["format"] == "binary"
    # FASHN answers bad input with 400, so /docs must not promise FastAPI's 422 there
    assert "422" not in ops[("post", "/v1/run")]["responses"]
