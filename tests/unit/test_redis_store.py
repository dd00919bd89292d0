"""What only the Redis store does (the shared JobStore contract runs in test_sqlite_store.py):
routing by model and pod, takeover of a dead worker's stream entries, retried calls, pod registry,
pinned jobs of dead pods, admission state, and the private redis-server CI falls back to."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from pipelines.registry import load_registry
from server.errors import ServiceError
from server.jobs import EditJob, InputRef, JobMeta, JobStatus, Progress, ResultFile
from server.pods import PodAgent
from server.settings import Settings
from server.store.redis_store import RedisStore
from tests.support.redis_server import delete_prefix, redis_url, start_private_redis, unique_prefix  # noqa: F401
from tests.support.server_harness import write_weights


@pytest.fixture
def prefix(redis_url):  # noqa: F811
    value = unique_prefix()
    yield value
    delete_prefix(redis_url, value)


@pytest.fixture
def pod_store(redis_url, prefix):  # noqa: F811
    """``pod_store(server_id, models)``: the store as one pod's worker process sees it."""
    made = []

    def make(server_id=None, models=None, **kwargs):
        store = RedisStore(redis_url, prefix=prefix, server_id=server_id, models=models, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _add(store, job_id, *, server_id=None, model=None, callback=None, owner="o"):
    job = EditJob(prompt="p", images=[InputRef(path=f"inputs/{job_id}/0")])
    meta = JobMeta(
        contract="imagepipeline", owner=owner, server_id=server_id, model=model, callback_url=callback
    )
    return store.add_job(job_id, job, meta, max_queued=100)


def _result(job_id, attempt=1):
    return ResultFile(
        path=f"results/{job_id}/{attempt}-0.webp", mime_type="image/webp", format="webp", width=8, height=8,
        sha256="0" * 64, seed=1,
    )  # fmt: skip


def test_redis_routing_by_pod_and_model(pod_store):
    api = pod_store()
    gpu1 = pod_store("gpu-1", ["edit"])
    gpu2 = pod_store("gpu-2", ["edit"])
    other_model = pod_store("gpu-3", ["refiner"])
    _add(api, "job_shared", model="edit")
    _add(api, "job_pinned2", server_id="gpu-2", model="edit")
    assert other_model.claim("gpu-3-w0", 10) is None  # holds no "edit"
    assert gpu1.claim("gpu-1-w0", 10).id == "job_shared"
    assert gpu1.claim("gpu-1-w0", 10) is None  # the pinned job is not gpu-1's
    got = gpu2.claim("gpu-2-w0", 10)
    assert got.id == "job_pinned2" and got.ran_on == "gpu-2" and got.meta.server_id == "gpu-2"


def test_redis_pinned_work_comes_first_on_its_pod(pod_store):
    api = pod_store()
    _add(api, "job_shared", model="edit")
    _add(api, "job_pinned", server_id="gpu-1", model="edit")
    gpu1 = pod_store("gpu-1", ["edit"])
    assert [gpu1.claim("gpu-1-w0", 10).id, gpu1.claim("gpu-1-w1", 10).id] == ["job_pinned", "job_shared"]


def test_redis_dead_worker_entry_taken_over_after_its_lease(pod_store):
    api = pod_store()
    _add(api, "job_1", model="edit")
    a, b = pod_store("gpu-1", ["edit"]), pod_store("gpu-2", ["edit"])
    assert a.claim("gpu-1-w0", lease_s=0.2).attempts == 1
    assert b.claim("gpu-2-w0", lease_s=0.2) is None  # a's lease still runs
    assert a.renew_lease("job_1", "gpu-1-w0", 0.2)
    time.sleep(0.3)  # a stops renewing: its worker died
    taken = b.claim("gpu-2-w0", lease_s=0.2)  # idle for a whole lease: XAUTOCLAIM takes it over
    assert taken.id == "job_1" and taken.attempts == 2 and taken.ran_on == "gpu-2"
    assert a.set_progress("job_1", "gpu-1-w0", Progress(stage="denoise", step=1, total=8)) is True
    assert not a.renew_lease("job_1", "gpu-1-w0", 10)
    assert b.complete("job_1", [_result("job_1", 2)], 1, 0.5, [])
    assert not a.complete("job_1", [_result("job_1", 1)], 1, 0.5, [])  # the late one never wins
    assert [r.path for r in a.get_job("job_1").results] == ["results/job_1/2-0.webp"]
    # The entry was acknowledged: nobody gets the job again.
    time.sleep(0.3)
    assert a.claim("gpu-1-w0", 0.2) is None and b.claim("gpu-2-w0", 0.2) is None


def test_redis_expired_lease_reaped_for_workers_with_longer_leases(pod_store):
    api = pod_store()
    _add(api, "job_1", model="edit")
    a, b = pod_store("gpu-1", ["edit"]), pod_store("gpu-2", ["edit"])
    a.claim("gpu-1-w0", lease_s=0.2)
    time.sleep(0.3)
    assert b.claim("gpu-2-w0", lease_s=60) is None  # not idle for b's own lease yet
    assert api.requeue_expired(3) == ["job_1"]  # any pod's supervisor: the hash's lease ran out
    assert b.claim("gpu-2-w0", lease_s=60).attempts == 2


def test_redis_release_worker_makes_its_job_available_at_once(pod_store):
    api = pod_store()
    _add(api, "job_1", model="edit")
    a, b = pod_store("gpu-1", ["edit"]), pod_store("gpu-2", ["edit"])
    a.claim("gpu-1-w0", lease_s=60)
    a.release_worker("gpu-1-w0")  # its supervisor saw the process die
    assert api.requeue_expired(3) == ["job_1"] and api.get_job("job_1").status == JobStatus.QUEUED
    assert b.claim("gpu-2-w0", 60).id == "job_1"


def test_redis_retried_calls_do_not_double(pod_store, redis_url, prefix):  # noqa: F811
    api = pod_store()
    _add(api, "job_1", model="edit")
    _add(api, "job_1", model="edit")  # a retry after a lost reply
    worker = pod_store("gpu-1", ["edit"])
    assert worker.claim("gpu-1-w0", 10).attempts == 1
    assert worker.claim("gpu-1-w0", 10) is None
    assert worker.complete("job_1", [_result("job_1")], 1, 0.5, [])
    assert worker.complete("job_1", [_result("job_1")], 1, 0.5, [])  # same result again: still ours
    assert not worker.complete("job_1", [_result("job_1", 2)], 1, 0.5, [])  # another attempt's: refused
    assert api.metrics_snapshot()["jobs"] == {("completed", "imagepipeline"): 1}


def test_redis_status_the_same_from_every_pod(pod_store):
    api_a, api_b = pod_store(), pod_store()
    for i in range(4):
        _add(api_a if i % 2 else api_b, f"job_{i}", model="edit")
    worker = pod_store("gpu-1", ["edit"])
    worker.worker_heartbeat("gpu-1-w0", 1, "ready")
    worker.claim("gpu-1-w0", 10)
    worker.set_progress("job_0", "gpu-1-w0", Progress(stage="denoise", step=4, total=8))
    for store in (api_a, api_b):
        assert [store.get_job(f"job_{i}").queue_position for i in range(1, 4)] == [1, 2, 3]
        assert store.get_job("job_0").progress.percent() == 45
        # what the running job has left, the two queued ahead, then its own (30 s each by default)
        assert store.get_job("job_3").estimated_seconds == pytest.approx(30 * 4, abs=1)
    worker.complete("job_0", [_result("job_0")], 1, 2.0, [])
    # ETAs learn from finished jobs; a second live worker halves the wait.
    pod_store("gpu-2", ["edit"]).worker_heartbeat("gpu-2-w0", 2, "ready")
    assert api_b.get_job("job_3").estimated_seconds == pytest.approx(2.0 * (2 // 2 + 1))


def _agent(tmp_path, redis_url, prefix, store, server_id="api-a", role="api", alive=0, **settings):  # noqa: F811
    values = dict(weights=str(write_weights(tmp_path)), data_dir=tmp_path / server_id, server_id=server_id)
    values.update(redis_url=redis_url, redis_prefix=prefix, role=role, **settings)
    count = lambda: alive  # noqa: E731
    supervisor = SimpleNamespace(slots=[None] * alive, alive=count, beating=count, draining=False)
    settings = Settings(**values)
    return PodAgent(settings, store, load_registry(settings.weights), supervisor)


def test_redis_pods_register_and_pinning_is_checked(tmp_path, pod_store, redis_url, prefix):  # noqa: F811
    store = pod_store()
    worker_pod = _agent(tmp_path, redis_url, prefix, store, "gpu-1", "worker", alive=1)
    idle_pod = _agent(tmp_path, redis_url, prefix, store, "gpu-2", "worker", alive=0)
    api = _agent(tmp_path, redis_url, prefix, store, pod_dead_after_s=0.5)
    for agent in (worker_pod, idle_pod, api):
        agent.beat()
    live = {p["server_id"]: p for p in api.live_pods()}
    assert set(live) == {"gpu-1", "gpu-2", "api-a"}
    assert live["gpu-1"]["models"] == ["edit", "refiner"] and live["gpu-1"]["loras"]["edit"] == [
        "lightning-8"
    ]
    api.check_server_id("gpu-1")
    for bad in ("nowhere", "api-a", "gpu-2"):
        with pytest.raises(ServiceError) as err:
            api.check_server_id(bad)
        assert err.value.code == "WRONG_SERVER" and err.value.http_status == 421
    worker_pod.store.pod_stopped("gpu-1")  # a clean shutdown: refused at once, not after the timeout
    with pytest.raises(ServiceError):
        api.check_server_id("gpu-1")
    worker_pod.beat()
    time.sleep(0.6)  # silent past pod_dead_after_s
    assert {p["server_id"] for p in api.live_pods()} == set()
    with pytest.raises(ServiceError):
        api.check_server_id("gpu-1")


def test_redis_pinned_jobs_of_a_dead_pod_fail_after_the_timeout(tmp_path, pod_store, redis_url, prefix):  # noqa: F811
    api_store = pod_store()
    dead = _agent(tmp_path, redis_url, prefix, api_store, "gpu-1", "worker", alive=1)
    alive = _agent(tmp_path, redis_url, prefix, api_store, "gpu-2", "worker", alive=1)
    sweeper = _agent(tmp_path, redis_url, prefix, api_store, pinned_pod_timeout_s=0.5)
    dead.beat()
    alive.beat()
    _add(api_store, "job_running", server_id="gpu-1", callback="http://hook")
    _add(api_store, "job_waiting", server_id="gpu-1")
    _add(api_store, "job_other_pod", server_id="gpu-2")
    _add(api_store, "job_unpinned")
    pod_store("gpu-1", ["edit"]).claim("gpu-1-w0", lease_s=0.2)
    assert sweeper.sweep_orphaned_pins() == []  # not silent long enough yet
    time.sleep(0.6)
    alive.beat()
    assert api_store.requeue_expired(3) == ["job_running"]  # its worker died with the pod
    assert sorted(sweeper.sweep_orphaned_pins()) == ["job_running", "job_waiting"]
    for job_id in ("job_running", "job_waiting"):
        record = api_store.get_job(job_id)
        assert record.status == JobStatus.FAILED and record.failure_reason_code == "SERVER_LOST"
        assert record.retryable is True and "gpu-1" in record.error
    assert [d.event for d in api_store.due_deliveries(10)] == ["job.failed"]
    assert api_store.get_job("job_other_pod").status == JobStatus.QUEUED
    assert api_store.get_job("job_unpinned").status == JobStatus.QUEUED


def test_redis_admission_state_is_shared(pod_store):
    a, b = pod_store(), pod_store()
    assert [a.rate_hit("k", 2, 60), b.rate_hit("k", 2, 60)] == [0, 0]
    assert 1 <= a.rate_hit("k", 2, 60) <= 60
    assert a.idempotency_begin("o", "key-1", "fp", 60) == ("new", None)
    assert b.idempotency_begin("o", "key-1", "fp", 60) == ("pending", None)
    assert b.idempotency_begin("o", "key-1", "other", 60) == ("mismatch", None)
    a.idempotency_finish("o", "key-1", "job_9")
    assert b.idempotency_begin("o", "key-1", "fp", 60) == ("done", "job_9")
    a.idempotency_begin("o", "key-2", "fp", 60)
    a.idempotency_abort("o", "key-2")
    assert b.idempotency_begin("o", "key-2", "fp", 60) == ("new", None)
    _add(a, "job_1", owner="alice")
    _add(b, "job_2", owner="alice")
    assert a.active_count("alice") == 2 and b.queued_count() == 2
    assert [r.id for r in b.list_jobs("alice")] == ["job_2", "job_1"]
    b.cancel("job_1")
    assert a.active_count("alice") == 1
    assert (
        a.shared_secret("signing", lambda: "first") == b.shared_secret("signing", lambda: "second") == "first"
    )


def test_redis_private_server_for_ci(tmp_path):
    """Without a Redis on 6379, the test fixture starts this one; check that it really works."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    proc, url = start_private_redis(tmp_path)
    try:
        store = RedisStore(url, prefix="ci")
        _add(store, "job_1")
        assert store.claim("w", 10).id == "job_1"
        store.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_entry_of_a_vanished_job_is_dropped(pod_store):
    api = pod_store()
    _add(api, "job_gone", model="edit")
    _add(api, "job_next", model="edit")
    api.r.delete(api.k("job", "job_gone"))  # its record expired while the entry waited
    worker = pod_store("gpu-1", ["edit"])
    assert worker.claim("gpu-1-w0", 10).id == "job_next"
    assert api.r.xlen(api.k("stream", "shared:edit")) == 1  # only job_next's entry is left


def test_redis_idle_worker_on_another_pod_is_woken_when_a_job_is_queued(pod_store):
    import threading
    import time

    api, worker = pod_store("api-a"), pod_store("gpu-b")
    waker = worker.open_waker()
    assert waker.wait(0.2) is False  # nothing queued: the wait runs its full timeout
    threading.Timer(0.3, lambda: _add(api, "job_wake")).start()
    started = time.monotonic()
    assert waker.wait(10) is True
    assert time.monotonic() - started < 5  # woken by the job, long before the timeout
    assert worker.claim("gpu-b-w0", 30).id == "job_wake"
