"""A worker plans for its device at start and the server says so: the plan on /v1/servers and in
/metrics, and a job larger than the plan fits refused at submission (naming the largest side)
instead of running out of memory after the queue. The tiny set on the CPU, with ``gpu_memory_gib``
emulating a small card."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)
from tests.support.server_harness import AsgiServer, ServeProcess, free_port, make_settings, png_bytes

# 2 GiB: a card the tiny set fits only below 1024px (the text encoder's 1 GiB and the CUDA context
# come first), so the worker plans for a smaller side than the limits' 2048.
TERMINAL = ("completed", "failed", "cancelled")
MEMORY = "memory:\n  plan: resident\n  gpu_memory_gib: 2\n"


def published(server) -> dict:
    return server.get("/v1/servers").json()["servers"][0]["memory_plans"][0]


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    # A real `retouch serve`: the plan gauges live in the worker process and reach /metrics through
    # prometheus-client's multiprocess files, which an in-process app cannot count on.
    weights = tiny_weights.parent / "weights-2gib.yaml"
    weights.write_text(tiny_weights.read_text() + "\n" + MEMORY)
    data = tmp_path_factory.mktemp("memory-server") / "data"
    data.mkdir()
    srv = ServeProcess(weights, data, free_port())
    try:
        srv.wait(timeout=180)
        with httpx.Client(base_url=srv.base_url, headers={"X-API-Key": "any"}, timeout=60) as client:
            yield client
    finally:
        srv.stop()


def edit(server, **body):
    picture = "data:image/png;base64," + base64.b64encode(png_bytes(96, 64)).decode()
    return server.post("/edit/image/v1", json={"prompt": "make it warmer", "input_image": picture, **body})


def test_the_workers_plan_is_on_v1_servers_and_in_metrics(server):
    pods = server.get("/v1/servers").json()["servers"]
    plans = pods[0]["memory_plans"]
    assert [p["plan"] for p in plans] == ["resident"]
    assert plans[0]["gpu_memory_gib"] == 2 and 256 <= plans[0]["largest_side"] < 1024
    assert plans[0]["placements"]["qwen-image-edit-tiny.transformer"] == "gpu"
    scrape = server.get("/metrics").text
    assert 'retouch_memory_plan_info{plan="resident",worker=' in scrape
    assert "retouch_memory_plan_largest_side_pixels{worker=" in scrape
    assert f"}} {float(plans[0]['largest_side'])}" in scrape


def test_a_job_larger_than_the_plan_fits_is_refused_at_submission(server):
    side = published(server)["largest_side"]
    refused = edit(server, width=1024, height=1024)
    # the status this contract gives every invalid parameter (OpenAI/IG1 answers those with 400)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["error_code"] == "INVALID_PARAMETERS"
    assert f"fits outputs up to {side}px" in body["message"] and "1024x1024" in body["message"]
    accepted = edit(server, width=side, height=side // 2, seed=1)
    assert accepted.status_code == 200, accepted.text
    job_id, deadline = accepted.json()["job_id"], time.monotonic() + 120
    while (status := server.get(f"/edit/image/v1/status/{job_id}").json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["status"] == "completed", status


def test_an_api_pod_on_redis_refuses_what_the_worker_pods_plans_do_not_fit(
    redis_url,  # noqa: F811
    tmp_path,
):
    """Scale-out: the API pod has no worker and no plan of its own; the GPU pods' plans reach it in
    their pod records, and a pinned job is held to its pod's plan. OpenAI answers in its own 400."""
    from server.store.redis_store import RedisStore

    prefix = unique_prefix()
    settings = make_settings(tmp_path, role="api", workers=0, redis_url=redis_url, redis_prefix=prefix)
    store = RedisStore(redis_url, prefix=prefix)
    for server_id, side in (("gpu-small", 256), ("gpu-big", 512)):
        plan = {"worker": f"{server_id}-w0", "plan": "low-memory", "largest_side": side}
        store.pod_heartbeat(
            {
                "server_id": server_id,
                "role": "worker",
                "state": "running",
                "workers_alive": 1,
                "models": ["edit"],
            }
            | {"memory_plans": [plan]}
        )
    api = AsgiServer(settings)
    picture = "data:image/png;base64," + base64.b64encode(png_bytes(96, 64)).decode()
    try:
        body = {"prompt": "make it warmer", "input_image": picture, "width": 384, "height": 256}
        refused = api.post("/edit/image/v1", json=body)
        assert refused.status_code == 422, refused.text
        assert "fits outputs up to 256px" in refused.json()["message"]
        pinned = api.post("/edit/image/v1", json=body | {"server_id": "gpu-big"})
        assert pinned.status_code == 200, pinned.text
        small = api.post("/edit/image/v1", json=body | {"width": 256, "height": 192})
        assert small.status_code == 200, small.text

        openai = api.post(
            "/v1/images/edits",
            json={"prompt": "make it warmer", "images": [{"image_url": picture}], "size": "384x256"},
        )
        assert openai.status_code == 400, openai.text
        error = openai.json()["error"]
        assert error["type"] == "invalid_request_error" and "up to 256px" in error["message"]
    finally:
        api.close()
        store.close()
        delete_prefix(redis_url, prefix)


def test_a_swapping_pods_plan_per_model_decides_each_jobs_largest_side(
    redis_url,  # noqa: F811
    tiny_weights,
    tmp_path,
):
    """A worker that swaps models (weights.yaml swap) plans each model it may load; a job is held to
    its own model's plan, not to whichever model the worker has loaded now."""
    from server.store.redis_store import RedisStore

    prefix = unique_prefix()
    settings = make_settings(
        tmp_path, role="api", workers=0, redis_url=redis_url, redis_prefix=prefix, weights=str(tiny_weights)
    )
    store = RedisStore(redis_url, prefix=prefix)
    by_model = {"qwen-image-edit-tiny": 256, "qwen-image-2.1-tiny": 1024}
    plan = {"worker": "gpu-swap-w0", "plan": "custom", "largest_side": 256, "largest_side_by_model": by_model}
    models = ["qwen-image-2.1-tiny", "qwen-image-edit-tiny", "z-image-turbo-tiny"]
    store.pod_heartbeat(
        {"server_id": "gpu-swap", "role": "worker", "state": "running", "workers_alive": 1, "models": models}
        | {"memory_plans": [plan]}
    )
    api = AsgiServer(settings)
    picture = "data:image/png;base64," + base64.b64encode(png_bytes(96, 64)).decode()
    try:
        body = {"prompt": "make it warmer", "input_image": picture, "width": 384, "height": 256}
        refused = api.post("/edit/image/v1", json=body)  # the default model: its plan fits 256px
        assert refused.status_code == 422 and "fits outputs up to 256px" in refused.json()["message"]
        newer = api.post("/edit/image/v1", json=body | {"model": "qwen-image-2.1"})
        assert newer.status_code == 200, newer.text
    finally:
        api.close()
        store.close()
        delete_prefix(redis_url, prefix)
