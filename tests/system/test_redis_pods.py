"""Scale-out on Redis, end to end: 2 API pods and 3 worker pods (separate processes) on tiny weights.

One cluster for the module; the tests run in file order and the last one kills a worker pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook

from benchmarks.queue_load import ADMIN_KEY, EDIT_KEY, Cluster, png_data_url, result_files, status, submit
from benchmarks.queue_load import wait_all as wait_jobs
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)

WORKERS = ["gpu-1", "gpu-2", "gpu-3"]
PINNED_TIMEOUT_S = 6


@pytest.fixture(scope="module")
def cluster(redis_url, tiny_weights, tmp_path_factory):  # noqa: F811
    prefix = unique_prefix()
    c = Cluster(
        redis_url,
        prefix,
        tiny_weights,
        tmp_path_factory.mktemp("pods"),
        pinned_pod_timeout_s=PINNED_TIMEOUT_S,
    )
    c.workers = {sid: c.start("worker", sid) for sid in WORKERS}
    c.apis = [c.start("api", "api-a"), c.start("api", "api-b")]
    try:
        for pod in [*c.workers.values(), *c.apis]:
            pod.wait_up()
        c.wait_workers(WORKERS)
        yield c
    finally:
        c.stop()
        delete_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def image():
    return png_data_url(64, 48)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (a pod's worker processes)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _submit(client, api, image, **fields) -> str:
    resp = submit(client, api, {"prompt": "make it blue", "input_image": image, **fields})
    assert resp.status_code == 200, resp.text
    return resp.json()["job_id"]


def test_redis_servers_lists_live_pods_for_admins(cluster, client, registry):
    api = cluster.apis[0]
    denied = client.get(f"{api.url}/v1/servers", headers={"X-API-Key": EDIT_KEY})
    assert denied.status_code == 403 and denied.json()["error_code"] == "FORBIDDEN"
    # A pod publishes its record every 2 s: the one after its worker turned ready counts it live.
    deadline = time.monotonic() + 10
    while True:
        body = client.get(f"{api.url}/v1/servers", headers={"X-API-Key": ADMIN_KEY}).json()
        pods = {p["server_id"]: p for p in body["servers"]}
        if all(pods.get(sid, {}).get("workers_alive") for sid in WORKERS) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(pods) == {*WORKERS, "api-a", "api-b"}
    # each worker pod loads the default edit model (no RETOUCH_EDIT_MODEL) and the refiner
    held = sorted({registry.default_model, registry.model_for("refiner")[0]})
    for sid in WORKERS:
        assert pods[sid]["role"] == "worker" and pods[sid]["workers_alive"] == 1
        assert pods[sid]["models"] == held
        assert pods[sid]["loras"] == {m: sorted(registry.models[m].loras) for m in held}
        assert pods[sid]["age_s"] < 3
    assert pods["api-a"]["role"] == "api" and pods["api-a"]["models"] == []


def test_redis_jobs_spread_over_workers_and_pinned_jobs_stay_on_their_pod(cluster, client, image):
    api_a, api_b = cluster.apis
    unpinned = [_submit(client, (api_a, api_b)[i % 2], image, seed=i) for i in range(12)]
    # Queue positions read through the other API pod follow submission order. Read newest first:
    # positions only fall as workers claim jobs, so an older job read later still reads lower
    # (read oldest first, a claim between two reads could give two jobs the same position).
    positions = [status(client, api_b, j)["queue_position"] for j in reversed(unpinned[-4:])][::-1]
    queued = [p for p in positions if p is not None]
    assert queued == sorted(queued) and len(set(queued)) == len(queued)
    pinned = {sid: [_submit(client, api_a, image, server_id=sid) for _ in range(2)] for sid in WORKERS}
    all_ids = unpinned + [j for ids in pinned.values() for j in ids]
    done = wait_jobs(client, [api_b, api_a], all_ids, timeout=240)
    assert {j: done[j]["status"] for j in all_ids} == dict.fromkeys(all_ids, "completed")
    assert {done[j]["server_id"] for j in unpinned} == set(WORKERS)
    for sid, ids in pinned.items():
        assert [done[j]["server_id"] for j in ids] == [sid, sid]
    for job_id in all_ids:
        assert len(result_files(cluster, job_id)) == 1
    # A result URL signed by one API pod downloads from the other (shared secret, shared files).
    url = httpx.URL(done[unpinned[0]]["result_url"])
    other = api_a if url.port == api_b.port else api_b
    picture = client.get(f"{other.url}{url.raw_path.decode()}")
    assert picture.status_code == 200 and picture.content[:4] == b"RIFF"


def test_redis_unknown_or_api_server_id_is_refused_at_submit(cluster, client, image):
    for server_id in ("nowhere", "api-a"):
        resp = submit(client, cluster.apis[0], {"prompt": "x", "input_image": image, "server_id": server_id})
        assert resp.status_code == 421, resp.text
        assert resp.json()["error_code"] == "WRONG_SERVER" and resp.json()["field"] == "server_id"


class _Hooks(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        _Hooks.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_redis_each_webhook_sent_once_by_one_of_the_api_pods(cluster, client, image):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        ids = [_submit(client, cluster.apis[i % 2], image, callback_url=hook) for i in range(6)]
        wait_jobs(client, cluster.apis, ids, timeout=120)
        deadline = time.monotonic() + 30
        while len(_Hooks.received) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a second sender, if there were one, would post by now
    finally:
        server.shutdown()
    store = cluster.store()
    secret = store.r.get(store.k("secret", "webhook"))  # no secret was configured: shared via Redis
    store.close()
    seen = [headers["webhook-id"] for headers, _ in _Hooks.received]
    assert sorted(seen) == sorted(f"msg_{j}_completed" for j in ids)
    for headers, body in _Hooks.received:
        payload = Webhook(secret).verify(body, headers)
        assert payload["status"] == "completed" and payload["result_url"]


def test_redis_restarting_api_pods_loses_no_job(cluster, client, image):
    api_a, api_b = cluster.apis
    slow = {"faster_inference": False, "num_inference_steps": 60}
    ids = [_submit(client, (api_a, api_b)[i % 2], image, seed=100 + i, **slow) for i in range(6)]
    assert any(status(client, api_a, j)["status"] in ("queued", "processing") for j in ids)
    for pod in (api_a, api_b):
        pod.kill()
    cluster.apis = [cluster.start("api", "api-a"), cluster.start("api", "api-b")]
    for pod in cluster.apis:
        pod.wait_up()
    done = wait_jobs(client, cluster.apis, ids, timeout=180)
    assert {j: done[j]["status"] for j in ids} == dict.fromkeys(ids, "completed")
    assert all(len(result_files(cluster, j)) == 1 for j in ids)


def test_redis_killed_worker_pod_unpinned_rerun_elsewhere_pinned_fail(cluster, client, image):
    api_a, api_b = cluster.apis
    slow = {"faster_inference": False, "num_inference_steps": 100}
    long_ids = [_submit(client, api_a, image, seed=200 + i, **slow) for i in range(3)]
    # Each idle worker takes one; wait until all three run (progress is visible through the other pod).
    deadline = time.monotonic() + 60
    while True:
        bodies = {j: status(client, api_b, j) for j in long_ids}
        running = {b["server_id"]: j for j, b in bodies.items() if b["status"] == "processing"}
        if set(running) == set(WORKERS):
            break
        assert time.monotonic() < deadline, bodies
        time.sleep(0.1)
    # The pod whose job is least far along dies, so it surely dies mid-job.
    victim = min(running, key=lambda sid: bodies[running[sid]]["progress"])
    # Its workers frozen first, so it surely dies mid-job: a tiny job can end within the few
    # milliseconds between the check above and the kill on a fast CPU.
    workers = _children(cluster.workers[victim].proc.pid)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    pinned = [_submit(client, api_b, image, server_id=victim) for _ in range(2)]
    cluster.workers[victim].kill()
    for pid in workers:  # stopped, they cannot notice the orphaning that ends them otherwise
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    done = wait_jobs(client, [api_a, api_b], long_ids + pinned, timeout=240)
    for job_id in long_ids:
        assert done[job_id]["status"] == "completed", done[job_id]
        assert len(result_files(cluster, job_id)) == 1
    assert done[running[victim]]["server_id"] in set(WORKERS) - {victim}
    for job_id in pinned:
        body = done[job_id]
        assert body["status"] == "failed" and body["failure_reason_code"] == "SERVER_LOST"
        assert body["retryable"] is True and not result_files(cluster, job_id)
    # The dead pod leaves /v1/servers and can no longer be pinned.
    servers = client.get(f"{api_a.url}/v1/servers", headers={"X-API-Key": ADMIN_KEY}).json()
    assert victim not in {p["server_id"] for p in servers["servers"]}
    resp = submit(client, api_a, {"prompt": "x", "input_image": image, "server_id": victim})
    assert resp.status_code == 421 and resp.json()["error_code"] == "WRONG_SERVER"
    store = cluster.store()
    try:
        assert store.get_job(running[victim]).attempts == 2
        assert {store.get_job(j).attempts for j in long_ids if j != running[victim]} == {1}
        # Pinned jobs waited for their pod for the configured time before failing.
        assert all(store.get_job(j).finished_at - killed_at >= PINNED_TIMEOUT_S - 1 for j in pinned)
    finally:
        store.close()
