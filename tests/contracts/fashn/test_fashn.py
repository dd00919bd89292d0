"""The FASHN contract (``/v1/run`` model ``edit``, ``/v1/status/{id}``).

In-process ASGI tests (fake engine in a real worker) cover the translation and every documented
error in FASHN's own shapes; the end-to-end tests drive the official ``fashn`` client against a
real ``retouch serve`` on tiny weights.
"""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import urlsplit

import pytest
import requests
from fashn import Fashn
from PIL import Image
from standardwebhooks import Webhook

from pipelines.images import is_ai_marked
from server.auth import KeysFile
from tests.support.server_harness import (
    WEIGHTS_YAML,
    AsgiServer,
    WebhookReceiver,
    make_settings,
    png_bytes,
)

KEY = "fashn-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The harness registry plus a 4-step Lightning LoRA, so generation_mode "fast" can run.
_L8 = "      lightning-8: {path: l8.safetensors, steps: 8, guidance: 1.0, scheduler: lightning}\n"
_L4 = "      lightning-4: {path: l4.safetensors, steps: 4, guidance: 1.0, scheduler: lightning}\n"


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def mask_png(width: int, height: int) -> bytes:
    """White (edit) in the left half, black (keep) elsewhere."""
    img = Image.new("L", (width, height), 0)
    img.paste(255, (0, 0, width // 2, height))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fashn")
    weights = tmp / "weights-fast.yaml"
    weights.write_text(WEIGHTS_YAML.replace(_L8, _L8 + _L4))
    settings = make_settings(
        tmp,
        weights=str(weights),
        api_keys=f"{KEY},broke-key,other-key",
        key_budgets_usd={"broke-key": 0.0},
        fetch_allow="127.0.0.1",  # the webhook receiver of a test runs on loopback
    )
    srv = AsgiServer(settings)
    srv.limited_key, _ = KeysFile(settings.keys_path).add("limited", ["edit"], rate_per_min=1)
    srv.wait_ready()
    yield srv
    srv.close()


def _run(server, inputs: dict, headers=AUTH, **extra):
    return server.post("/v1/run", json={"model_name": "edit", "inputs": inputs, **extra}, headers=headers)


def _wait(server, prediction_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    seen = set()
    while True:
        body = server.get(f"/v1/status/{prediction_id}", headers=AUTH).json()
        seen.add(body["status"])
        if body["status"] not in ("starting", "in_queue", "processing"):
            body["seen"] = seen
            return body
        assert time.monotonic() < deadline, f"prediction stuck in {body['status']}"
        time.sleep(0.05)


def _job(server, prediction_id: str):
    return server.app.state.core.store.get_job(prediction_id)


def _assert_error(resp, status: int, name: str, word: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "message"} and body["error"] == name, body
    if word:
        assert word in body["message"], body
    assert "Traceback" not in resp.text and "/tmp" not in resp.text
    return body


def test_fashn_run_translates_inputs_and_serves_url_output(server):
    photo = png_bytes(64, 48)
    resp = _run(
        server,
        {
            "image": data_url(photo),
            "prompt": "make the jacket green",
            "mask": data_url(mask_png(64, 48)),
            "image_context": data_url(png_bytes(32, 32, (0, 200, 0))),
            "generation_mode": "fast",
            "resolution": "2k",
            "aspect_ratio": "4:3",
            "num_images": 2,
            "seed": 7,
            "output_format": "jpeg",
        },
    )
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert set(run) == {"id", "error"} and run["error"] is None
    queued = _job(server, run["id"]).job
    job = queued.params
    assert job.lightning_steps == 4 and job.resolution == "2k" and job.aspect_ratio == "4:3"
    assert job.num_images == 2 and job.seed == 7 and job.output_format == "jpeg"
    assert queued.mask is not None and len(queued.references) == 1

    status = _wait(server, run["id"])
    assert status["status"] == "completed" and status["error"] is None, status
    assert set(status) - {"seen"} == {"id", "status", "output", "error"}
    parts = urlsplit(status["output"][0])
    got = server.get(f"{parts.path}?{parts.query}")
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).format == "JPEG"


@pytest.mark.parametrize(
    ("mode", "steps"), [("balanced", 8), ("quality", None), (None, 8)], ids=["balanced", "quality", "default"]
)
def test_fashn_generation_modes_and_default_seed(server, mode, steps):
    inputs = {"image": data_url(png_bytes()), "prompt": "tidy the collar"}
    if mode:
        inputs["generation_mode"] = mode
    resp = _run(server, inputs)
    assert resp.status_code == 200, resp.text
    job = _job(server, resp.json()["id"]).job.params
    assert job.lightning_steps == steps
    assert job.seed == 42 and job.output_format == "png" and job.resolution == "1k" and job.num_images == 1


def test_fashn_return_base64_is_delivered_once_then_deleted(server):
    resp = _run(server, {"image": data_url(png_bytes()), "prompt": "add a scarf", "return_base64": True})
    prediction_id = resp.json()["id"]
    status = _wait(server, prediction_id)
    assert status["status"] == "completed"
    (output,) = status["output"]
    assert output.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(output.split(",", 1)[1]))).format == "PNG"
    core = server.app.state.core
    paths = [r.path for r in _job(server, prediction_id).results]
    deadline = time.monotonic() + 5
    while any(core.inputs.files.exists(p) for p in paths):  # deleted right after the response was sent
        assert time.monotonic() < deadline, "result kept on disk after delivery"
        time.sleep(0.05)
    again = server.get(f"/v1/status/{prediction_id}", headers=AUTH).json()
    assert again["status"] == "completed" and again["output"] == []


def test_fashn_unknown_model_name_is_a_clear_400(server):
    resp = server.post(
        "/v1/run",
        json={"model_name": "tryon-v1.6", "inputs": {"model_image": "x", "garment_image": "y"}},
        headers=AUTH,
    )
    body = _assert_error(resp, 400, "BadRequest", "model_name")
    assert "tryon-v1.6" in body["message"] and "edit" in body["message"]


@pytest.mark.parametrize(
    ("inputs", "word"),
    [
        ({"image": "IMG"}, "inputs.prompt"),
        ({"prompt": "x"}, "inputs.image"),
        ({"image": "IMG", "prompt": "x", "num_images": 5}, "num_images"),
        ({"image": "IMG", "prompt": "x", "num_images": 0}, "num_images"),
        ({"image": "IMG", "prompt": "x", "seed": -1}, "seed"),
        ({"image": "IMG", "prompt": "x", "output_format": "webp"}, "output_format"),
        ({"image": "IMG", "prompt": "x", "resolution": "8k"}, "resolution"),
        ({"image": "IMG", "prompt": "x", "aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"image": "IMG", "prompt": "x", "generation_mode": "turbo"}, "generation_mode"),
        ({"image": "IMG", "prompt": "x", "garment_image": "IMG"}, "garment_image"),
        ({"image": "data:image/png;base64,bm90IGFuIGltYWdl", "prompt": "x"}, "inputs.image"),
        ({"image": "ftp://example.com/a.png", "prompt": "x"}, "inputs.image"),
        ({"image": "IMG", "prompt": "x", "mask": "MASK10"}, "inputs.mask is 10x10 but the image is 64x48"),
    ],
)
def test_fashn_bad_inputs_are_400(server, inputs, word):
    image = data_url(png_bytes(64, 48))
    inputs = {
        k: image if v == "IMG" else data_url(mask_png(10, 10)) if v == "MASK10" else v
        for k, v in inputs.items()
    }
    _assert_error(_run(server, inputs), 400, "BadRequest", word)


def test_fashn_bad_webhook_url_and_body(server):
    inputs = {"image": data_url(png_bytes()), "prompt": "x"}
    _assert_error(_run(server, inputs, webhook_url="file:///etc/passwd"), 400, "BadRequest", "webhook_url")
    _assert_error(_run(server, inputs, callback="x"), 400, "BadRequest", "callback")
    resp = server.post("/v1/run", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    _assert_error(resp, 400, "BadRequest")


def test_fashn_auth(server):
    inputs = {"image": data_url(png_bytes()), "prompt": "x"}
    _assert_error(_run(server, inputs, headers={}), 401, "UnauthorizedAccess")
    _assert_error(_run(server, inputs, headers={"Authorization": "Bearer nope"}), 401, "UnauthorizedAccess")
    _assert_error(server.get("/v1/status/job_x", headers={}), 401, "UnauthorizedAccess")
    assert _run(server, inputs, headers={"X-API-Key": KEY}).status_code == 200


def test_fashn_not_found(server):
    _assert_error(server.get("/v1/status/job_doesnotexist", headers=AUTH), 404, "NotFound")
    # Another key's prediction, and a job another contract created, are not this caller's.
    mine = _run(server, {"image": data_url(png_bytes()), "prompt": "x"}).json()["id"]
    _assert_error(
        server.get(f"/v1/status/{mine}", headers={"Authorization": "Bearer other-key"}), 404, "NotFound"
    )
    other = server.post(
        "/edit/image/v1",
        json={"prompt": "x", "input_image": data_url(png_bytes())},
        headers={"X-API-Key": KEY},
    ).json()["job_id"]
    _assert_error(server.get(f"/v1/status/{other}", headers=AUTH), 404, "NotFound")


def test_fashn_out_of_credits_and_rate_limit_are_429(server):
    inputs = {"image": data_url(png_bytes()), "prompt": "x"}
    broke = _run(server, inputs, headers={"Authorization": "Bearer broke-key"})
    _assert_error(broke, 429, "OutOfCredits")
    assert broke.headers["x-should-retry"] == "false"  # the client must not retry a spent budget
    limited = {"Authorization": f"Bearer {server.limited_key}"}
    assert _run(server, inputs, headers=limited).status_code == 200
    second = _run(server, inputs, headers=limited)
    _assert_error(second, 429, "RateLimitExceeded")
    assert int(second.headers["Retry-After"]) > 0


def test_fashn_runtime_failure_has_error_name_and_message(server):
    resp = _run(server, {"image": data_url(png_bytes()), "prompt": "oom please"})
    status = _wait(server, resp.json()["id"])
    assert status["status"] == "failed" and status["output"] is None
    assert status["error"]["name"] == "PipelineError" and "memory" in status["error"]["message"]


def test_fashn_queue_states_and_time_out(server):
    # "slow" takes 10 s in the fake engine, past the registry's 5 s job limit.
    slow = _run(server, {"image": data_url(png_bytes()), "prompt": "slow edit"}).json()["id"]
    queued = _run(server, {"image": data_url(png_bytes()), "prompt": "quick edit"}).json()["id"]
    # One worker, busy with (or about to take) the slow job: the second one waits its turn.
    assert server.get(f"/v1/status/{queued}", headers=AUTH).json()["status"] == "in_queue"
    timed_out = _wait(server, slow)
    assert "processing" in timed_out["seen"] and timed_out["status"] == "time_out", timed_out
    assert timed_out["error"]["name"] == "PipelineError" and timed_out["output"] is None
    assert _wait(server, queued)["status"] == "completed"


def test_fashn_webhook_posts_the_status_body(server):
    receiver = WebhookReceiver()
    got, done = receiver.got, receiver.done
    try:
        hook = receiver.url
        run = _run(server, {"image": data_url(png_bytes()), "prompt": "hook"}, webhook_url=hook).json()
        assert done.wait(30), "no webhook"
        headers, body = got[0]
        payload = Webhook(server.settings.webhook_secret).verify(body, headers)
        assert payload["id"] == run["id"] and payload["status"] == "completed" and payload["output"]
        # return_base64 with a webhook only: the pictures travel in it, and none stays on disk after
        done.clear()
        inline = {"image": data_url(png_bytes()), "prompt": "hook", "return_base64": True}
        run = _run(server, inline, webhook_url=hook).json()
        assert done.wait(30), "no webhook"
        payload = Webhook(server.settings.webhook_secret).verify(got[1][1], got[1][0])
        assert payload["output"][0].startswith("data:image/")
        results = server.app.state.core.inputs.files.root / "results" / run["id"]

        def kept() -> list[str]:
            try:
                return [p.name for p in results.iterdir()]
            except FileNotFoundError:  # the folder itself may go with its last file
                return []

        deadline = time.monotonic() + 10
        while kept() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kept() == []
    finally:
        receiver.close()


# -- end to end: the official client against `retouch serve` on tiny weights -----------------------


@pytest.fixture(scope="module")
def client(tiny_serve):
    return Fashn(api_key="studio-key", base_url=tiny_serve.base_url)


def _e2e_inputs(**extra) -> dict:
    return {
        "image": data_url(png_bytes(96, 64)),
        "prompt": "change the red jacket to blue",
        "mask": data_url(mask_png(96, 64)),
        "image_context": data_url(png_bytes(48, 48, (20, 60, 220))),
        **extra,
    }


def test_fashn_e2e_run_then_status_url_output(client):
    run = client.predictions.run(model_name="edit", inputs=_e2e_inputs(seed=3, generation_mode="fast"))
    assert run.id and run.error is None
    deadline = time.monotonic() + 180
    status = client.predictions.status(run.id)
    while status.status in ("starting", "in_queue", "processing"):
        assert time.monotonic() < deadline, "prediction did not finish"
        time.sleep(0.3)
        status = client.predictions.status(run.id)
    assert status.status == "completed" and status.error is None, status
    (url,) = status.output
    picture = requests.get(url, timeout=10)
    assert picture.status_code == 200 and is_ai_marked(picture.content)
    # A masked edit keeps the source's size, pixel for pixel.
    assert Image.open(io.BytesIO(picture.content)).size == (96, 64)


def test_fashn_e2e_subscribe_return_base64(client, tiny_serve):
    updates = []
    result = client.predictions.subscribe(
        model_name="edit",
        inputs=_e2e_inputs(return_base64=True, output_format="jpeg"),
        poll_interval=300,
        timeout=180_000,
        on_queue_update=lambda s: updates.append(s.status),
    )
    assert result.status == "completed" and result.error is None, result
    (output,) = result.output
    assert output.startswith("data:image/jpeg;base64,")
    picture = base64.b64decode(output.split(",", 1)[1])
    assert Image.open(io.BytesIO(picture)).format == "JPEG" and is_ai_marked(picture)
    assert updates[-1] == "completed"
    results, inputs = (tiny_serve.data_dir / folder / result.id for folder in ("results", "inputs"))
    deadline = time.monotonic() + 10
    while list(results.glob("*")) or inputs.exists():  # deleted right after the response was sent
        assert time.monotonic() < deadline, "result or input kept on disk after delivery"
        time.sleep(0.05)


def test_fashn_e2e_unknown_model_reaches_the_client(client):
    from fashn import BadRequestError

    with pytest.raises(BadRequestError) as err:
        client.predictions.run(model_name="tryon-v1.6", inputs={"model_image": "a", "garment_image": "b"})
    assert err.value.status_code == 400 and "tryon-v1.6" in str(err.value.body)


def test_fashn_idempotency_key_replays_and_conflicts(server):
    inputs = {"image": data_url(png_bytes()), "prompt": "same request"}
    headers = {**AUTH, "Idempotency-Key": "fashn-idem-1"}
    first = _run(server, inputs, headers=headers).json()["id"]
    assert _run(server, inputs, headers=headers).json()["id"] == first
    other = _run(server, {**inputs, "prompt": "another request"}, headers=headers)
    _assert_error(other, 409, "Conflict", "Idempotency-Key")
    assert other.headers["x-should-retry"] == "false"
