"""The store's role protocols, its ``shared`` declaration, and the one mapping of a full queue."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from server.errors import ServiceError
from server.jobs import EditJob, InputRef, JobMeta
from server.limits import Admission
from server.store import JobStore, Pods, QueueFull, SQLiteStore, base
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)

ROLES = (
    base.JobQueue,
    base.Costs,
    base.Workers,
    base.Uploads,
    base.Profiles,
    base.Outbox,
    base.Metrics,
    base.AdmissionState,
)


def _members(protocol) -> set[str]:
    """The methods a role declares, its own and those of the roles it unites."""
    own = (k for k in protocol.__mro__ if k.__module__ == protocol.__module__)
    return {n for k in own for n in vars(k) if not n.startswith("_")}


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "db.sqlite3")
        return
    from server.store.redis_store import RedisStore

    prefix = unique_prefix()
    url = request.getfixturevalue("redis_url")
    yield RedisStore(url, prefix=prefix)
    delete_prefix(url, prefix)


def _add(store, job_id: str, max_queued: int):
    job = EditJob(prompt="p", images=[InputRef(path=f"inputs/{job_id}/0")])
    return store.add_job(job_id, job, JobMeta(contract="imagepipeline", owner="o"), max_queued=max_queued)


def test_job_store_is_the_union_of_the_roles():
    union = set().union(*(_members(role) for role in ROLES))
    assert union <= _members(JobStore)
    assert {"add_job", "claim", "due_deliveries", "rate_hit", "cost_model", "ready_workers"} <= union
    assert "pod_heartbeat" in _members(Pods) and "pod_heartbeat" not in _members(JobStore)


def test_both_stores_have_every_role_they_declare():
    from server.store.redis_store import RedisStore

    for cls in (SQLiteStore, RedisStore):
        missing = {n for role in ROLES for n in _members(role) if not hasattr(cls, n)}
        assert not missing, f"{cls.__name__} lacks {sorted(missing)}"
    assert SQLiteStore.shared is False and RedisStore.shared is True
    assert all(hasattr(RedisStore, n) for n in _members(Pods))


def test_the_store_says_queue_full_without_a_retry_policy(store):
    _add(store, "job_a", max_queued=1)
    with pytest.raises(QueueFull) as err:
        _add(store, "job_b", max_queued=1)
    assert err.value.queued == 1 and err.value.code == "QUEUE_FULL" and err.value.retry_after_s is None


def _admission(tmp_path, store, **settings):
    values = {"queue_full_retry_after_s": 7, "max_queued_jobs": 10, "idempotency_ttl_s": 60.0, **settings}
    keys = SimpleNamespace(by_owner=lambda owner: None)
    return Admission(SimpleNamespace(**values), store, keys, lambda owner: None, max_prompt_chars=100)


def test_a_full_store_is_answered_with_the_settings_retry_after(tmp_path):
    """The store's insert finds the queue full (another pod took the room after admission counted):
    the client gets the same 503 QUEUE_FULL and Retry-After as the admission's own refusal."""
    store = SQLiteStore(tmp_path / "db.sqlite3")
    admission = _admission(tmp_path, store)
    with pytest.raises(ServiceError) as err, admission.admit("o", "p", {"a": 1}, "order-1"):
        raise QueueFull(12)
    assert type(err.value) is ServiceError
    assert (err.value.code, err.value.http_status, err.value.retry_after_s) == ("QUEUE_FULL", 503, 7)
    assert err.value.message == "the queue is full (12 jobs waiting); retry later"
    # the refused request's Idempotency-Key may be used again
    assert store.idempotency_begin("o", "order-1", "x", 60.0)[0] == "new"


def test_the_admission_refusal_is_unchanged(tmp_path):
    store = SQLiteStore(tmp_path / "db.sqlite3")
    _add(store, "job_a", max_queued=5)
    admission = _admission(tmp_path, store, max_queued_jobs=1)
    with pytest.raises(ServiceError) as err, admission.admit("o", "p", {}):
        pytest.fail("admitted into a full queue")
    assert (err.value.code, err.value.retry_after_s) == ("QUEUE_FULL", 7)
    assert err.value.message == "the queue is full (1 jobs waiting); retry later"
