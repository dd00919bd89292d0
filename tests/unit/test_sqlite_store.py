"""The SQLite store: leased queue, cancellation, idempotent completion, expiry, TTL; URL signing."""

from __future__ import annotations

import time

import pytest

from server import signing
from server.errors import ServiceError
from server.jobs import EditJob, InputRef, JobMeta, JobStatus, Progress, ResultFile
from server.store import SQLiteStore, Upload
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """Builds the store under test; every test here runs against SQLite and against Redis."""
    made = []

    def make(**kwargs):
        kwargs = {"result_ttl_s": 3600, "default_job_seconds": 10, "workers": 1, **kwargs}
        if request.param == "sqlite":
            return SQLiteStore(tmp_path / f"db{len(made)}.sqlite3", **kwargs)
        from server.store.redis_store import RedisStore

        prefix = unique_prefix()
        made.append(prefix)
        return RedisStore(request.getfixturevalue("redis_url"), prefix=prefix, **kwargs)

    yield make
    for prefix in made:
        delete_prefix(request.getfixturevalue("redis_url"), prefix)


@pytest.fixture
def store(make_store):
    return make_store()


def _add(store, job_id="job_1", callback=None, max_queued=100):
    job = EditJob(prompt="p", images=[InputRef(path=f"inputs/{job_id}/0")])
    return store.add_job(
        job_id,
        job,
        JobMeta(contract="imagepipeline", owner="o", callback_url=callback),
        max_queued=max_queued,
    )


def _result(name="r.webp"):
    return ResultFile(
        path=f"results/{name}",
        mime_type="image/webp",
        format="webp",
        width=8,
        height=8,
        sha256="0" * 64,
        seed=1,
    )


def test_server_store_status_enum():
    assert [s.is_terminal() for s in JobStatus] == [False, False, True, True, True]


def test_server_store_fifo_claim_and_positions(store):
    for i in range(3):
        _add(store, f"job_{i}")
        time.sleep(0.002)
    assert store.get_job("job_2").queue_position == 3
    assert store.get_job("job_2").estimated_seconds == pytest.approx(30)
    claimed = store.claim("w1", lease_s=5)
    assert claimed.id == "job_0" and claimed.status == JobStatus.PROCESSING and claimed.attempts == 1
    assert store.get_job("job_2").queue_position == 2
    assert store.claim("w2", 5).id == "job_1"


def test_server_store_queue_limit(store):
    _add(store, "job_a", max_queued=1)
    with pytest.raises(ServiceError) as err:
        _add(store, "job_b", max_queued=1)
    assert err.value.code == "QUEUE_FULL" and err.value.http_status == 503


def test_server_store_expired_lease_requeues_then_gives_up(store):
    _add(store)
    store.claim("w1", lease_s=0.01)
    time.sleep(0.02)
    assert store.requeue_expired(max_attempts=2) == ["job_1"]
    assert store.get_job("job_1").status == JobStatus.QUEUED
    assert store.claim("w2", 0.01).attempts == 2
    time.sleep(0.02)
    store.requeue_expired(max_attempts=2)
    rec = store.get_job("job_1")
    assert rec.status == JobStatus.FAILED and rec.failure_reason_code == "WORKER_LOST" and rec.retryable


def test_server_store_renew_keeps_the_lease(store):
    _add(store)
    store.claim("w1", lease_s=0.05)
    assert store.renew_lease("job_1", "w1", 10)
    assert not store.renew_lease("job_1", "intruder", 10)
    time.sleep(0.06)
    assert store.requeue_expired(3) == []


def test_server_store_first_terminal_write_wins_and_one_webhook(store):
    _add(store, callback="http://hook")
    store.claim("w1", 0.01)
    time.sleep(0.02)
    store.requeue_expired(3)
    store.claim("w2", 10)
    assert store.complete("job_1", [_result("a.webp")], 5, 1.0, [])
    # the first worker comes back late with its own result: refused
    assert not store.complete("job_1", [_result("b.webp")], 6, 1.0, [])
    assert not store.fail("job_1", "INTERNAL_ERROR", "late", True)
    rec = store.get_job("job_1")
    assert rec.status == JobStatus.COMPLETED and rec.results[0].path == "results/a.webp" and rec.seed == 5
    deliveries = store.due_deliveries(10)
    assert [d.id for d in deliveries] == ["msg_job_1_completed"]


def test_server_store_cancel_queued_and_running(store):
    _add(store, "job_q")
    assert store.cancel("job_q").status == JobStatus.CANCELLED
    _add(store, "job_r")
    store.claim("w1", 10)
    assert store.cancel("job_r").cancel_requested
    assert store.set_progress("job_r", "w1", Progress(stage="denoise", step=1, total=8)) is True
    assert store.cancel("missing") is None


def test_server_store_progress_and_eta(store):
    _add(store)
    store.claim("w1", 10)
    assert store.set_progress("job_1", "w1", Progress(stage="denoise", step=4, total=8)) is False
    rec = store.get_job("job_1")
    assert rec.progress.percent() == 45 and rec.estimated_seconds <= 10
    store.complete("job_1", [], 1, 2.0, [])
    assert store.estimate_new(rec.meta.work) == pytest.approx(2.0)


def test_server_store_overdue_and_release(store):
    _add(store)
    store.claim("w1", 100)
    assert store.overdue(timeout_s=-1) == [("job_1", "w1")]
    store.release_worker("w1")
    assert store.requeue_expired(3) == ["job_1"]


def test_server_store_ttl_expiry(make_store):
    store = make_store(result_ttl_s=0.01)
    _add(store)
    store.claim("w", 10)
    store.complete("job_1", [_result()], 1, 1.0, [])
    now = time.time()
    store.add_upload(Upload("up_1", "o", "a.png", "image/png", 3, "uploads/up_1/a.png", now, now + 0.01))
    time.sleep(0.02)
    assert store.expire_results() == ["results/r.webp"]
    assert store.get_job("job_1").results == []
    assert store.expire_uploads() == ["uploads/up_1/a.png"] and store.get_upload("up_1") is None


def test_server_store_webhook_outbox_states(store):
    _add(store, callback="http://hook")
    store.fail("job_1", "INVALID_PARAMETERS", "bad", False)
    (d,) = store.due_deliveries(5)
    assert d.event == "job.failed"
    store.delivery_failed(d.id, "HTTP 500", time.time() + 60)
    assert store.due_deliveries(5) == [] and store.get_delivery(d.id).attempts == 1
    store.delivery_failed(d.id, "HTTP 500", None)
    assert store.get_delivery(d.id).state == "failed"


def test_server_signed_urls():
    url = signing.sign("s3cret", "http://h", "/files/results/a.webp", 60, now=1000)
    expires, sig = url.split("?")[1].split("&")
    expires, sig = expires.split("=")[1], sig.split("=")[1]
    signing.verify("s3cret", "/files/results/a.webp", expires, sig, now=1000)
    for path, exp, s in [
        ("/files/results/b.webp", expires, sig),
        ("/files/results/a.webp", "99999", sig),
        ("/files/results/a.webp", expires, None),
        ("/files/results/a.webp", "x", sig),
    ]:
        with pytest.raises(ServiceError) as err:
            signing.verify("s3cret", path, exp, s, now=1000)
        assert err.value.http_status == 403
    with pytest.raises(ServiceError) as err:
        signing.verify("s3cret", "/files/results/a.webp", expires, sig, now=2000)
    assert err.value.http_status == 410
