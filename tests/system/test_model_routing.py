"""Two models side by side on Redis: each worker pod loads one edit model (RETOUCH_EDIT_MODEL, else
the default) and a job names its model; it runs on a pod that holds that model, through the shared
per-model queue, and a job pinned to a pod that does not hold its model is refused up front."""

from __future__ import annotations

import httpx
import pytest

from benchmarks.queue_load import Cluster, png_data_url, submit
from benchmarks.queue_load import wait_all as wait_jobs
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)

HOLDS = {"gpu-2511": None, "gpu-2509": "qwen-image-edit-2509-tiny"}  # None: the default (2511)


@pytest.fixture(scope="module")
def cluster(redis_url, tiny_weights, tmp_path_factory):  # noqa: F811
    prefix = unique_prefix()
    c = Cluster(redis_url, prefix, tiny_weights, tmp_path_factory.mktemp("routing"))
    c.workers = {
        sid: c.start("worker", sid, **({"edit_model": model} if model else {}))
        for sid, model in HOLDS.items()
    }
    c.api = c.start("api", "api-a")
    try:
        for pod in [*c.workers.values(), c.api]:
            pod.wait_up()
        c.wait_workers(list(HOLDS))
        yield c
    finally:
        c.stop()
        delete_prefix(redis_url, prefix)


def test_each_job_runs_on_a_pod_that_holds_its_model(cluster):
    image = png_data_url(64, 48)
    with httpx.Client(timeout=30) as client:
        jobs = {}
        for model, pod in (
            ("qwen-image-edit-2509", "gpu-2509"),
            ("qwen-image-edit-2511", "gpu-2511"),
            (None, "gpu-2511"),
        ):
            for seed in range(2):
                body = {"prompt": "x", "input_image": image, "seed": seed} | (
                    {"model": model} if model else {}
                )
                resp = submit(client, cluster.api, body)
                assert resp.status_code == 200, resp.text
                jobs[resp.json()["job_id"]] = pod
        done = wait_jobs(client, [cluster.api], list(jobs), timeout=180)
        assert {j: (done[j]["status"], done[j]["server_id"]) for j in jobs} == {
            j: ("completed", pod) for j, pod in jobs.items()
        }
        # pinned to a pod that loads another model: refused now, naming what it loads
        body = {"prompt": "x", "input_image": image, "model": "qwen-image-edit-2509", "server_id": "gpu-2511"}
        refused = submit(client, cluster.api, body)
        assert refused.status_code == 422 and refused.json()["field"] == "model", refused.text
        assert "not loaded on the pod 'gpu-2511'" in refused.json()["message"]
