"""Overload: a full queue refuses fast and for free; Idempotency-Key makes job creation retry-safe."""

from __future__ import annotations

import base64
import statistics
import threading
import time

import pytest

from benchmarks.reliability import record
from tests.support.server_harness import AsgiServer, PictureHost, make_settings, png_bytes

IMG = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


@pytest.fixture
def pictures():
    server = PictureHost(png_bytes(40, 30))
    yield server
    server.close()


def test_full_queue_rejects_fast_without_fetching_or_decoding(tmp_path, pictures, monkeypatch):
    import server.core as core_module

    decodes = []
    real_decode = core_module.decode_image
    monkeypatch.setattr(
        core_module, "decode_image", lambda *a, **k: decodes.append(1) or real_decode(*a, **k)
    )
    srv = AsgiServer(make_settings(tmp_path, workers=0, max_queued_jobs=2, queue_full_retry_after_s=7))
    try:
        for i in range(2):
            r = srv.post("/edit/image/v1", json={"prompt": f"fill {i}", "input_image": pictures.url})
            assert r.status_code == 200, r.text
        fetches_before, decodes_before = pictures.hits, len(decodes)
        assert fetches_before == 2 and decodes_before == 2
        latencies, burst = [], 200
        for i in range(burst):
            started = time.perf_counter()
            r = srv.post("/edit/image/v1", json={"prompt": f"burst {i}", "input_image": pictures.url})
            latencies.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 503, r.text
            assert r.json()["error_code"] == "QUEUE_FULL" and r.headers["Retry-After"] == "7"
        assert pictures.hits == fetches_before, "a rejected request fetched its input"
        assert len(decodes) == decodes_before, "a rejected request decoded a picture"
    finally:
        srv.close()
    latencies.sort()
    p50, p95 = statistics.median(latencies), latencies[int(len(latencies) * 0.95) - 1]
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    record(
        "queue_full",
        {
            "burst": burst,
            "answered_503": burst,
            "p50_ms": round(p50, 2),
            "p95_ms": round(p95, 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(latencies[-1], 2),
            "fetches_by_burst": pictures.hits - fetches_before,
            "decodes_by_burst": len(decodes) - decodes_before,
        },
    )
    # p95, not max: on a shared 2-core CI box the slowest few carry scheduler noise (recorded above).
    assert p95 < 50, f"p95 {p95:.1f} ms"


def test_queue_slot_is_reserved_before_the_fetch(tmp_path, pictures):
    """Two requests racing for the last slot: the loser is refused before it fetches anything."""
    gate = threading.Event()
    entered = threading.Event()
    real_get = pictures.httpd.RequestHandlerClass.do_GET

    def slow_get(handler):
        entered.set()
        gate.wait(10)
        real_get(handler)

    pictures.httpd.RequestHandlerClass.do_GET = slow_get
    srv = AsgiServer(make_settings(tmp_path, workers=0, max_queued_jobs=1))
    try:
        first: dict = {}
        thread = threading.Thread(
            target=lambda: first.update(
                r=srv.post("/edit/image/v1", json={"prompt": "a", "input_image": pictures.url})
            )
        )
        thread.start()
        assert entered.wait(10)  # the first request holds the only slot while its fetch is under way
        second = srv.post("/edit/image/v1", json={"prompt": "b", "input_image": pictures.url})
        assert second.status_code == 503 and second.json()["error_code"] == "QUEUE_FULL"
        assert pictures.hits == 0  # the loser did not even start a fetch
        gate.set()
        thread.join(10)
        assert first["r"].status_code == 200
    finally:
        gate.set()
        srv.close()


def test_idempotency_key_replays_the_same_job(tmp_path):
    srv = AsgiServer(make_settings(tmp_path, workers=0))
    body = {"prompt": "idempotent", "input_image": IMG, "seed": 3}
    try:
        key_a = {"X-API-Key": "k1", "Idempotency-Key": "order-17"}
        first = srv.post("/edit/image/v1", json=body, headers=key_a)
        replays = [srv.post("/edit/image/v1", json=body, headers=key_a) for _ in range(5)]
        assert first.status_code == 200
        assert {r.json()["job_id"] for r in replays} == {first.json()["job_id"]}
        conflict = srv.post("/edit/image/v1", json={**body, "seed": 4}, headers=key_a)
        assert conflict.status_code == 409 and conflict.json()["error_code"] == "IDEMPOTENCY_CONFLICT"
        # The same Idempotency-Key from another API key is another request.
        other = srv.post(
            "/edit/image/v1", json=body, headers={"X-API-Key": "k2", "Idempotency-Key": "order-17"}
        )
        assert other.status_code == 200 and other.json()["job_id"] != first.json()["job_id"]
        # Without the header every POST is a new job.
        plain = [srv.post("/edit/image/v1", json=body, headers={"X-API-Key": "k1"}) for _ in range(2)]
        assert len({r.json()["job_id"] for r in plain}) == 2
        jobs = srv.app.state.core.store.queued_count()
    finally:
        srv.close()
    assert jobs == 4  # first, other, and the two plain ones: no replay made a job
    record("idempotency", {"replays": len(replays), "jobs_created_by_replays": 0, "conflicts_409": 1})


def test_idempotency_key_after_a_failed_request_and_after_expiry(tmp_path):
    srv = AsgiServer(make_settings(tmp_path, workers=0, idempotency_ttl_s=1))
    headers = {"X-API-Key": "k1", "Idempotency-Key": "retry-me"}
    try:
        bad = srv.post(
            "/edit/image/v1",
            json={"prompt": "x", "input_image": "data:image/png;base64,AAAA"},
            headers=headers,
        )
        assert bad.status_code == 422
        # A request that failed validation made no job, so its key does not pin that body.
        good = srv.post("/edit/image/v1", json={"prompt": "x", "input_image": IMG}, headers=headers)
        assert good.status_code == 200
        time.sleep(1.2)
        again = srv.post("/edit/image/v1", json={"prompt": "x", "input_image": IMG}, headers=headers)
        assert again.status_code == 200 and again.json()["job_id"] != good.json()["job_id"]
        too_long = srv.post(
            "/edit/image/v1",
            json={"prompt": "x", "input_image": IMG},
            headers={"X-API-Key": "k1", "Idempotency-Key": "k" * 300},
        )
        assert too_long.status_code == 422 and "Idempotency-Key" in too_long.json()["message"]
    finally:
        srv.close()


def test_idempotency_and_rate_state_in_the_sqlite_store(tmp_path, monkeypatch):
    """The JobStore admission methods (the Redis store implements the same ones)."""
    from server.store import SQLiteStore, sqlite_limits

    store = SQLiteStore(tmp_path / "s.sqlite3")
    assert store.idempotency_begin("o", "k", "f1", 3600) == ("new", None)
    assert store.idempotency_begin("o", "k", "f1", 3600) == ("pending", None)  # first still running
    assert store.idempotency_begin("o", "k", "f2", 3600) == ("mismatch", None)
    store.idempotency_finish("o", "k", "job_1")
    assert store.idempotency_begin("o", "k", "f1", 3600) == ("done", "job_1")
    assert store.idempotency_begin("o2", "k", "f1", 3600) == ("new", None)  # keys are per owner
    # A claim whose request died before making a job is taken over after a while, not held for 24 h.
    monkeypatch.setattr(sqlite_limits, "ABANDONED_AFTER_S", 0.0)
    time.sleep(0.01)
    assert store.idempotency_begin("o2", "k", "f9", 3600) == ("new", None)
    store.idempotency_abort("o2", "k")
    assert store.idempotency_begin("o2", "k", "f3", 3600) == ("new", None)
    waits = [store.rate_hit("b", 3, 60.0) for _ in range(5)]
    assert waits[:3] == [0, 0, 0] and all(isinstance(w, int) and 55 <= w <= 60 for w in waits[3:])
    assert store.rate_hit("other", 3, 60.0) == 0
