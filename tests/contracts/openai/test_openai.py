"""OpenAI-compatible / IG1 contract in-process (ASGI, fake engine): parsing and every error case in
OpenAI's shape, and the registry tables it reads. The official client runs in test_openai_client.py.
"""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.support.openai_helpers import (
    AUTH,
    EDITS,
    KEY,
    OPENAI_WEIGHTS_YAML,
    PictureHost,
    data_url,
    decode_b64,
    rgba_mask,
)
from tests.support.server_harness import WEIGHTS_YAML, AsgiServer, make_settings, png_bytes
from tests.support.server_harness import free_port as _free_port


# --------------------------------------------------------------------------------------------
# In-process ASGI, fake engine: request parsing and every error case
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asgi(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai-asgi")
    weights = tmp / "openai-weights.yaml"
    weights.write_text(OPENAI_WEIGHTS_YAML)
    srv = AsgiServer(make_settings(tmp, weights=str(weights), api_keys=KEY))
    srv.wait_ready()
    yield srv
    srv.close()


def _post(asgi, headers=AUTH, **kwargs):
    return asgi.post(EDITS, headers=headers, **kwargs)


def _json_edit(**fields):
    body = {
        "model": "qwen-image-edit",
        "prompt": "make it blue",
        "images": [{"image_url": data_url(png_bytes())}],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def assert_openai_error(resp, status: int, code: str, param: str | None = None, kind=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert err["code"] == code, err
    assert err["type"] == (kind or ("server_error" if status >= 500 else "invalid_request_error"))
    if param is not None:
        assert err["param"] == param, err
    assert err["message"] and "Traceback" not in resp.text and "/tmp" not in resp.text
    return err


def test_openai_asgi_json_edit_answers_in_openai_shape(asgi):
    r = _post(asgi, json=_json_edit(size="32x24", output_format="jpeg", quality="high"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"created", "data", "usage", "output_format", "quality", "size"}
    assert body["output_format"] == "jpeg" and body["quality"] == "high" and body["size"] == "32x24"
    assert decode_b64(body["data"][0]["b64_json"]).format == "JPEG"
    assert body["usage"]["output_tokens"] == 2 * 2 and body["usage"]["total_tokens"] == 4
    assert r.headers["x-retouch-job-id"].startswith("job_")


def test_openai_asgi_idempotent_retry_of_an_inline_answer_gets_the_same_pictures(asgi):
    headers = {**AUTH, "Idempotency-Key": "retry-after-a-dropped-connection"}
    first = _post(asgi, headers=headers, json=_json_edit(n=2))
    again = _post(asgi, headers=headers, json=_json_edit(n=2))
    assert first.status_code == again.status_code == 200, again.text
    assert first.headers["x-retouch-job-id"] == again.headers["x-retouch-job-id"]
    assert [d["b64_json"] for d in first.json()["data"]] == [d["b64_json"] for d in again.json()["data"]]
    # without the header nothing is kept once the pictures went out inline
    plain = _post(asgi, json=_json_edit())
    job_id = plain.headers["x-retouch-job-id"]
    assert not (asgi.app.state.core.inputs.files.root / "results" / job_id).is_dir() or not any(
        (asgi.app.state.core.inputs.files.root / "results" / job_id).iterdir()
    )


def test_openai_asgi_http_image_url_and_url_response(asgi):
    host = PictureHost(png_bytes(40, 30))
    try:
        r = _post(asgi, json=_json_edit(images=[{"image_url": host.url}], response_format="url"))
    finally:
        host.close()
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    got = asgi.get(url.removeprefix("http://retouch.test"))
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (40, 30)


def test_openai_asgi_models(asgi):
    listed = asgi.get("/v1/models", headers=AUTH).json()
    assert listed["object"] == "list"
    assert {m["id"] for m in listed["data"]} == {"qwen-image-edit", "qwen-image-edit-pe"}
    assert asgi.get("/v1/models/qwen-image-edit-pe", headers=AUTH).json()["id"] == "qwen-image-edit-pe"
    assert_openai_error(asgi.get("/v1/models/dall-e-2", headers=AUTH), 404, "model_not_found", "model")
    assert_openai_error(asgi.get("/v1/models", headers={}), 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"model": "gpt-image-1"}, 404, "model_not_found", "model"),
        ({"prompt": None}, 400, "invalid_parameters", "prompt"),
        ({"prompt": ""}, 400, "invalid_parameters", "prompt"),
        ({"images": []}, 400, "invalid_parameters", "images"),
        ({"images": [{"file_id": "file-123"}]}, 400, "unsupported_parameter", "images[0].file_id"),
        ({"images": [{"url": "x"}]}, 400, "invalid_parameters", "images[0].url"),
        ({"images": [{"image_url": "data:image/png;base64,@@@"}]}, 400, "invalid_parameters", "images"),
        ({"images": [{"image_url": data_url(b"not a picture")}]}, 400, "invalid_image", "images"),
        ({"images": [{"image_url": "ftp://example.com/a.png"}]}, 400, "invalid_parameters", "images"),
        ({"quality": "ultra"}, 400, "invalid_parameters", "quality"),
        ({"size": "big"}, 400, "invalid_parameters", "size"),
        ({"size": "4096x4096"}, 400, "invalid_parameters", "size"),
        ({"n": 5}, 400, "invalid_parameters", "n"),
        ({"n": 0}, 400, "invalid_parameters", "n"),
        ({"response_format": "gif"}, 400, "invalid_parameters", "response_format"),
        ({"output_format": "gif"}, 400, "invalid_parameters", "output_format"),
        ({"output_compression": 101}, 400, "invalid_parameters", "output_compression"),
        ({"partial_images": 4, "stream": True}, 400, "invalid_parameters", "partial_images"),
        ({"background": "transparent"}, 400, "unsupported_parameter", "background"),
        (
            {"mask": {"image_url": data_url(rgba_mask(10, 10, (0, 0, 5, 5)))}},
            400,
            "invalid_parameters",
            "mask",
        ),
    ],
)
def test_openai_asgi_invalid_requests(asgi, fields, status, code, param):
    assert_openai_error(_post(asgi, json=_json_edit(**fields)), status, code, param)


def test_openai_asgi_unknown_field_is_named(asgi):
    err = assert_openai_error(_post(asgi, json=_json_edit(style="vivid")), 400, "invalid_parameters", "style")
    assert err["message"] == "Unrecognized request argument supplied: style"


def test_openai_asgi_auth_errors(asgi):
    assert_openai_error(_post(asgi, headers={}, json=_json_edit()), 401, "invalid_api_key")
    assert_openai_error(
        _post(asgi, headers={"Authorization": "Bearer nope"}, json=_json_edit()), 401, "invalid_api_key"
    )


def test_openai_asgi_loopback_url_blocked_without_allowlist(tmp_path):
    weights = tmp_path / "w.yaml"
    weights.write_text(OPENAI_WEIGHTS_YAML)
    srv = AsgiServer(make_settings(tmp_path, weights=str(weights), workers=0, fetch_allow=None))
    try:
        body = _json_edit(images=[{"image_url": "http://127.0.0.1:9/photo.png"}])
        assert_openai_error(srv.post(EDITS, headers=AUTH, json=body), 400, "input_url_blocked", "images")
    finally:
        srv.close()


def test_openai_asgi_body_errors(asgi):
    assert_openai_error(
        _post(asgi, content=b"{not json", headers=AUTH | {"Content-Type": "application/json"}),
        400,
        "invalid_parameters",
    )
    assert_openai_error(_post(asgi, json=["a list"]), 400, "invalid_parameters")
    assert_openai_error(
        _post(asgi, content=b"prompt=x", headers=AUTH | {"Content-Type": "text/plain"}),
        400,
        "invalid_parameters",
    )
    # multipart without any picture, and with a picture sent as text
    assert_openai_error(
        _post(asgi, data={"prompt": "x"}, files={"other": ("a.png", png_bytes())}),
        400,
        "invalid_parameters",
        "other",
    )
    assert_openai_error(
        _post(asgi, data={"prompt": "x", "image": "not-a-file"}, files={"mask": ("m.png", png_bytes())}),
        400,
        "invalid_parameters",
        "image",
    )
    assert_openai_error(
        _post(asgi, data={"prompt": "x", "n": "many"}, files={"image": ("a.png", png_bytes())}),
        400,
        "invalid_parameters",
        "n",
    )


def test_openai_asgi_multipart_mask_must_match_the_image(asgi):
    files = [
        ("image", ("a.png", png_bytes(64, 48), "image/png")),
        ("mask", ("m.png", rgba_mask(32, 32, (0, 0, 8, 8)))),
    ]
    err = assert_openai_error(
        _post(asgi, data={"prompt": "x"}, files=files), 400, "invalid_parameters", "mask"
    )
    assert "32x32" in err["message"] and "64x48" in err["message"]


def test_openai_asgi_failed_job_answers_in_openai_shape(asgi):
    r = _post(asgi, json=_json_edit(prompt="oom please"))
    assert_openai_error(r, 503, "gpu_out_of_memory")


def test_openai_asgi_failed_stream_sends_an_error_event(asgi):
    r = _post(asgi, json=_json_edit(prompt="oom please", stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e.strip()]
    assert events[-1].startswith("event: error\ndata: ")
    assert '"code":"gpu_out_of_memory"' in events[-1]


def test_openai_client_that_goes_away_cancels_its_edit(tmp_path):
    """Over a real socket (uvicorn), a closed connection stops the job it was waiting for."""
    import uvicorn

    from server.app import create_app
    from server.auth import owner_of

    weights = tmp_path / "w.yaml"
    weights.write_text(OPENAI_WEIGHTS_YAML)
    app = create_app(make_settings(tmp_path, weights=str(weights), api_keys=KEY))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(httpx.ReadTimeout):  # the fake engine takes ~10 s on a "slow" prompt
            httpx.post(
                f"http://127.0.0.1:{port}{EDITS}", headers=AUTH, json=_json_edit(prompt="slow"), timeout=1.5
            )
        store = app.state.core.store
        deadline = time.monotonic() + 10
        while True:
            (job,) = store.list_jobs(owner_of(KEY), contract="openai")
            if job.status.is_terminal():
                break
            assert time.monotonic() < deadline, job.status
            time.sleep(0.1)
        assert job.status.value == "cancelled" and time.time() - job.created_at < 8
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_committed_registry_maps_every_quality_and_every_model_name():
    from pathlib import Path

    from pipelines import load_registry

    reg = load_registry(Path(__file__).resolve().parents[3] / "weights.yaml")
    assert {"low", "medium", "standard", "high", "hd", "auto"} <= set(reg.qualities)
    assert reg.qualities["low"].lightning_steps == 4 and reg.qualities["medium"].lightning_steps == 8
    assert reg.qualities["high"].lightning_steps is None and reg.qualities["high"].steps == 40
    # the default alias, each edit model by name, and a prompt-enhancing (-pe) twin of each
    assert {n: (m.model, m.enhance_prompt) for n, m in reg.public_models.items()} == {
        "qwen-image-edit": ("qwen-image-edit-2511", False),
        "qwen-image-edit-pe": ("qwen-image-edit-2511", True),
        "qwen-image-edit-2511": ("qwen-image-edit-2511", False),
        "qwen-image-edit-2511-pe": ("qwen-image-edit-2511", True),
        "qwen-image-edit-2509": ("qwen-image-edit-2509", False),
        "qwen-image-edit-2509-pe": ("qwen-image-edit-2509", True),
        "qwen-image-2.1": ("qwen-image-2.1", False),
        "qwen-image-2.1-pe": ("qwen-image-2.1", True),
    }


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ("qualities:\n  low: {lightning_steps: 4}\n", "no Lightning LoRA of the edit model runs 4 steps"),
        ("qualities:\n  low: {lightning_steps: 8, steps: 4}\n", "not both"),
        ("public_models:\n  qwen-image-edit: {model: nope}\n", "'nope' is not a declared edit model"),
        ("public_models:\n  qwen-image-edit: {model: refiner}\n", "'refiner' is not a declared edit model"),
    ],
)
def test_registry_refuses_inconsistent_contract_tables(tmp_path, extra, complaint):
    from pipelines import RegistryError, load_registry

    path = tmp_path / "weights.yaml"
    path.write_text(WEIGHTS_YAML + extra)
    with pytest.raises(RegistryError, match=complaint):
        load_registry(path)
