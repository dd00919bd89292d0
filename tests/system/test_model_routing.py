"""Several models side by side on Redis, in two worker pods: one loads one edit model (the default,
2511), the other swaps edit models per job (its weights.yaml says ``swap: true``; one loaded at a
time, 2509 first). A job names its model and runs on a pod that holds it, through the shared
per-model queue; a job pinned to a pod that cannot run its model is refused up front; a job that
needs a swap is priced with it and says on its status that it waited for one."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from benchmarks.queue_load import Cluster, png_data_url, submit
from benchmarks.queue_load import wait_all as wait_jobs
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)

OLDER, QWEN21 = "qwen-image-edit-2509-tiny", "qwen-image-2.1-tiny"


def swapping_weights(tiny_weights, folder) -> str:
    """The demo registry with swap on, one edit model loaded at a time, for the swapping pod."""
    data = yaml.safe_load(tiny_weights.read_text())
    data["root"] = str(tiny_weights.parent)
    data["swap"] = True
    data["memory"] = {"resident_edit_models": 1}
    path = folder / "weights-swap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def cluster(redis_url, tiny_weights, tmp_path_factory):  # noqa: F811
    prefix = unique_prefix()
    root = tmp_path_factory.mktemp("routing")
    c = Cluster(redis_url, prefix, tiny_weights, root)
    c.workers = {
        "gpu-2511": c.start("worker", "gpu-2511"),
        "gpu-swap": c.start(
            "worker", "gpu-swap", weights=swapping_weights(tiny_weights, root), edit_model=OLDER
        ),
    }
    c.api = c.start("api", "api-a")
    try:
        for pod in [*c.workers.values(), c.api]:
            pod.wait_up()
        c.wait_workers(list(c.workers))
        yield c
    finally:
        c.stop()
        delete_prefix(redis_url, prefix)


def wait_resident(store, pod: str, models: list[str], timeout: float = 10) -> None:
    """Until the pod's record (its next heartbeat) says its worker has ``models`` loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = next(p for p in store.pods() if p["server_id"] == pod)
        if [r["resident"] for r in record.get("resident") or ()] == [models]:
            return
        time.sleep(0.1)
    raise AssertionError(f"{pod} does not report {models} loaded")


def run(client, cluster, **body) -> dict:
    resp = submit(client, cluster.api, {"prompt": "x", "input_image": png_data_url(64, 48), **body})
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["job_id"]
    return wait_jobs(client, [cluster.api], [job_id], timeout=180)[job_id] | {"job_id": job_id}


def test_each_job_runs_on_a_pod_that_holds_or_swaps_in_its_model(cluster):
    store = cluster.store()
    with httpx.Client(timeout=30) as client:
        wait_resident(store, "gpu-swap", [OLDER])
        pods = {p["server_id"]: p for p in store.pods()}
        assert pods["gpu-swap"]["resident"][0]["resident"] == [OLDER]  # what it loaded first
        assert QWEN21 in pods["gpu-swap"]["models"] and QWEN21 not in pods["gpu-2511"]["models"]

        newer = run(client, cluster, model="qwen-image-2.1")  # only the swapping pod can run it
        assert (newer["status"], newer["server_id"]) == ("completed", "gpu-swap")
        assert f"{QWEN21} was loaded for this job" in " ".join(newer["warnings"])
        # priced with the swap: the slowest load that pod had measured (2.1 had never been loaded)
        loaded_first = pods["gpu-swap"]["resident"][0]["load_seconds"][OLDER]
        assert store.get_job(newer["job_id"]).meta.work["swap_seconds"] == pytest.approx(loaded_first)

        back = run(client, cluster, model="qwen-image-edit-2509")
        assert (back["status"], back["server_id"]) == ("completed", "gpu-swap")
        assert f"unloading {QWEN21}" in " ".join(back["warnings"])
        wait_resident(store, "gpu-swap", [OLDER])
        again = run(client, cluster, model="qwen-image-edit-2509")  # loaded now: no swap, none priced
        assert not any("was loaded" in w for w in again["warnings"])
        assert "swap_seconds" not in store.get_job(again["job_id"]).meta.work

        pinned = run(client, cluster, model="qwen-image-edit-2511", server_id="gpu-2511")
        assert (pinned["status"], pinned["server_id"]) == ("completed", "gpu-2511")
        default = run(client, cluster)  # no model: the default, which both pods can run
        assert default["status"] == "completed" and default["server_id"] in cluster.workers

        # pinned to a pod that cannot run its model: refused now, naming what that pod loads
        image = png_data_url(64, 48)
        body = {"prompt": "x", "input_image": image, "model": "qwen-image-2.1", "server_id": "gpu-2511"}
        refused = submit(client, cluster.api, body)
        assert refused.status_code == 422 and refused.json()["field"] == "model", refused.text
        assert "not loaded on the pod 'gpu-2511'" in refused.json()["message"]
    store.close()
