"""Exact money: a job's estimated cost is reserved when it is queued, settled once when it ends,
and concurrent submissions from one key never overspend it (SQLite and Redis; all four contracts)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from benchmarks.reliability import record
from server.errors import ServiceError
from server.jobs import EditJob, InputRef, JobMeta, JobStatus, ResultFile
from server.store import SQLiteStore
from tests.support.openai_helpers import OPENAI_WEIGHTS_YAML, data_url
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)
from tests.support.server_harness import AsgiServer, make_settings, png_bytes


def _redis_of_this_test(request) -> tuple[str, str]:
    """The test Redis and a key prefix of this test's own, deleted when the test ends."""
    prefix = unique_prefix()
    url = request.getfixturevalue("redis_url")
    request.addfinalizer(lambda: delete_prefix(url, prefix))
    return url, prefix


@contextmanager
def _serving(settings, *, ready: bool = True):
    """An in-process server on ``settings`` (ready: a worker is up), closed however the block ends."""
    srv = AsgiServer(settings)
    try:
        if ready:
            srv.wait_ready()
        yield srv
    finally:
        srv.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "db.sqlite3", default_job_seconds=10)
        return
    from server.store.redis_store import RedisStore

    url, prefix = _redis_of_this_test(request)
    made = RedisStore(url, prefix=prefix, default_job_seconds=10)
    yield made
    made.close()


def _add(store, job_id, *, budget=10.0, reserve=3.0, owner="o"):
    job = EditJob(prompt="p", images=[InputRef(path=f"inputs/{job_id}/0")])
    meta = JobMeta(contract="imagepipeline", owner=owner)
    return store.add_job(job_id, job, meta, max_queued=1000, budget_usd=budget, reserve_usd=reserve)


def _result(job_id, attempt=1):
    return ResultFile(
        path=f"results/{job_id}/{attempt}-0.webp", mime_type="image/webp", format="webp", width=8, height=8,
        sha256="0" * 64, seed=1,
    )  # fmt: skip


def test_budget_concurrent_submissions_never_overspend(store):
    # 16 threads race for a 10 USD budget with 3 USD reservations: exactly three get in.
    barrier = threading.Barrier(16)
    outcomes: list[str] = []

    def submit(i: int) -> None:
        barrier.wait()
        try:
            _add(store, f"job_{i}")
            outcomes.append("queued")
        except ServiceError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["INSUFFICIENT_BALANCE"] * 13 + ["queued"] * 3
    assert store.committed_usd("o") == pytest.approx(9.0, abs=1e-9)
    # another key's budget is its own
    _add(store, "job_other", owner="p")


def test_budget_reservation_is_settled_once_at_the_end(store):
    for name in ("done", "failed", "cancelled"):
        _add(store, name)
    with pytest.raises(ServiceError) as refused:
        _add(store, "one_too_many")  # 9 of 10 reserved: a 3 USD job does not fit
    assert refused.value.code == "INSUFFICIENT_BALANCE" and refused.value.http_status == 402
    assert "estimated cost (3.000000 USD)" in refused.value.message
    store.claim("w1", 10)  # "done"
    assert store.complete("done", [_result("done")], 1, 1.25, [], cost_usd=1.25)
    store.claim("w1", 10)  # "failed"
    assert store.fail("failed", "INTERNAL_ERROR", "boom", True)
    assert store.cancel("cancelled").status == JobStatus.CANCELLED
    # only the completed job's actual cost is left: every reservation was released
    assert store.committed_usd("o") == pytest.approx(1.25, abs=1e-9)
    assert store.get_job("done").cost_usd == pytest.approx(1.25)
    assert store.get_job("failed").cost_usd is None and store.get_job("cancelled").cost_usd is None
    # exactly what is left can be reserved, not a micro-dollar more
    _add(store, "rest", reserve=8.75)
    with pytest.raises(ServiceError):
        _add(store, "nothing_left", reserve=0.000001)


def test_budget_a_rerun_after_a_dead_worker_is_charged_once(store):
    _add(store, "job_1")
    store.claim("w1", lease_s=0.01)
    time.sleep(0.02)
    store.requeue_expired(max_attempts=3)  # the first worker died; the job runs again
    assert store.committed_usd("o") == pytest.approx(3.0)  # still reserved once
    store.claim("w2", 10)
    assert store.complete("job_1", [_result("job_1", attempt=2)], 1, 2.0, [], cost_usd=2.0)
    # the same call again (Redis: a retry after a lost reply) charges nothing more
    store.complete("job_1", [_result("job_1", attempt=2)], 1, 2.0, [], cost_usd=2.0)
    # the first worker comes back late with its own result: refused, and not charged
    assert not store.complete("job_1", [_result("job_1", attempt=1)], 1, 2.5, [], cost_usd=2.5)
    assert store.committed_usd("o") == pytest.approx(2.0, abs=1e-9)


def test_budget_balance_is_not_repriced_by_a_later_price(tmp_path):
    price_then = make_settings(tmp_path, workers=1, api_keys="k", key_budgets_usd={"k": 100.0})
    price_then = price_then.model_copy(update={"price_per_gpu_hour_usd": 36.0, "default_job_seconds": 1.0})
    with _serving(price_then) as srv:
        job = srv.post(
            "/edit/image/v1", json={"prompt": "x", "input_image": data_url(png_bytes())}, headers=AUTH_K
        ).json()["job_id"]
        done = _wait_done(srv, job)
        assert done["cost_usd"] == pytest.approx(done["inference_time_seconds"] * 0.01, rel=0.05, abs=1e-5)
        before = done["balance_remaining_usd"]
        assert before == pytest.approx(100.0 - done["cost_usd"], abs=1e-6)
    # The operator raises the price tenfold and restarts: history keeps the price it was charged at.
    with _serving(price_then.model_copy(update={"price_per_gpu_hour_usd": 360.0}), ready=False) as srv:
        again = srv.get(f"/edit/image/v1/status/{job}", headers=AUTH_K).json()
        assert again["cost_usd"] == done["cost_usd"] and again["balance_remaining_usd"] == before
        record(
            "budget_settled",
            {"price_then_usd_per_h": 36.0, "price_now_usd_per_h": 360.0,
             "job_seconds": done["inference_time_seconds"], "cost_usd": done["cost_usd"],
             "balance_then_usd": before, "balance_after_price_change_usd": again["balance_remaining_usd"]},
        )  # fmt: skip


AUTH_K = {"X-API-Key": "k"}


def _wait_done(
    srv, job_id: str, headers=AUTH_K, timeout: float = 30, status_path="/edit/image/v1/status"
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = srv.get(f"{status_path}/{job_id}", headers=headers).json()
        if body["status"] in ("completed", "failed", "cancelled", "canceled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


# A 1 USD budget at 1 USD per GPU second: the first job reserves exactly the budget (a job reserves
# at least one GPU second), is charged what it really ran (a fraction of a second), and then no new job fits.
KEYS = {"imagepipeline": "k-ip", "fashn": "k-fashn", "depicta": "k-depicta", "openai": "k-openai"}


def _one_dollar_keys(tmp, **overrides):
    """Settings of a server where each contract's key has a 1 USD budget at 1 USD per GPU second."""
    weights = tmp / "weights.yaml"
    weights.write_text(OPENAI_WEIGHTS_YAML)
    return make_settings(
        tmp,
        weights=str(weights),
        api_keys=",".join(KEYS.values()),
        key_budgets_usd=dict.fromkeys(KEYS.values(), 1.0),
        price_per_gpu_hour_usd=3600.0,
        default_job_seconds=1.0,
        **overrides,
    )


@pytest.fixture(scope="module")
def priced(tmp_path_factory):
    with _serving(_one_dollar_keys(tmp_path_factory.mktemp("priced"))) as srv:
        yield srv


UPLOADS: dict[object, str] = {}  # the Depicta upload of each test server
# Contracts whose replay checks passed in this run (the reliability row lists them).
REPLAYS: dict[str, set[str]] = {"charged_replays": set(), "replayed_at_zero_balance": set()}


def _record_replays() -> None:
    record(
        "budget_replay",
        {"replayed_after_completion_not_charged": ",".join(sorted(REPLAYS["charged_replays"])),
         "replayed_while_own_reservation_holds_all": ",".join(sorted(REPLAYS["replayed_at_zero_balance"])),
         "second_charges": 0, "second_reservations": 0},
    )  # fmt: skip  # the Depicta upload of each test server


def _request(srv, contract: str, idem: str | None, wait: bool = True):
    """Submit a small edit on ``contract``; asynchronous contracts are waited for if ``wait``."""
    key = KEYS[contract]
    headers = {"Authorization": f"Bearer {key}"} | ({"Idempotency-Key": idem} if idem else {})
    picture = data_url(png_bytes())
    if contract == "imagepipeline":
        resp = srv.post("/edit/image/v1", json={"prompt": "x", "input_image": picture}, headers=headers)
        job = resp.json().get("job_id")
        if job and wait:
            _wait_done(srv, job, headers={"X-API-Key": key})
    elif contract == "fashn":
        body = {"model_name": "edit", "inputs": {"image": picture, "prompt": "x"}}
        resp = srv.post("/v1/run", json=body, headers=headers)
        job = resp.json().get("id")
        if job and wait:  # each contract answers for its own jobs only
            _wait_done(srv, job, headers={"X-API-Key": key}, status_path="/v1/status")
    elif contract == "depicta":
        if srv not in UPLOADS:  # a replay sends the very same body, so the same upload URL
            files = {"image": ("a.png", png_bytes(), "image/png")}
            UPLOADS[srv] = srv.post("/v1/upload", files=files, headers=headers).json()["upload_url"]
        body = {"prompt": "x", "input_image_url": UPLOADS[srv]}
        resp = srv.post("/v1/edit/image", json=body, headers=headers)
        job = resp.headers.get("x-depicta-job-id")
    else:
        body = {"model": "qwen-image-edit", "prompt": "x", "images": [{"image_url": picture}]}
        resp = srv.post("/v1/images/edits", json=body, headers=headers)
        job = resp.headers.get("x-retouch-job-id")
    return resp, job


# What each contract answers a spent budget with (FASHN's documented OutOfCredits is a 429).
REFUSALS = {
    "imagepipeline": (402, lambda b: b["error_code"] == "INSUFFICIENT_BALANCE"),
    "fashn": (429, lambda b: b["error"] == "OutOfCredits"),
    "depicta": (402, lambda b: b["error"] == "insufficient_credits"),
    "openai": (402, lambda b: b["error"]["code"] == "insufficient_quota"),
}


@pytest.mark.parametrize("contract", list(KEYS))
def test_budget_an_idempotent_replay_is_not_charged_twice_on_any_contract(priced, contract):
    core = priced.app.state.core
    owner = core.authenticate(KEYS[contract])
    first, job = _request(priced, contract, "order-1")
    assert first.status_code == 200, first.text
    charged = core.get_job(job, owner).cost_usd
    assert 0 < charged < 1.0 and core.balance(owner) == pytest.approx(1.0 - charged, abs=1e-6)
    # A new job would not fit what is left; the replay of the accepted one is answered all the same,
    # with the same job, and neither reserves nor charges anything.
    again, replayed = _request(priced, contract, "order-1")
    assert again.status_code == 200 and replayed == job, again.text
    assert core.balance(owner) == pytest.approx(1.0 - charged, abs=1e-6)
    new, _ = _request(priced, contract, "order-2")
    status, shaped = REFUSALS[contract]
    assert new.status_code == status and shaped(new.json()), new.text
    assert "Traceback" not in new.text
    assert core.balance(owner) == pytest.approx(1.0 - charged, abs=1e-6)
    REPLAYS["charged_replays"].add(contract)
    _record_replays()


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """No workers: a queued job keeps its reservation, here the whole 1 USD budget."""
    with _serving(_one_dollar_keys(tmp_path_factory.mktemp("idle"), workers=0), ready=False) as srv:
        yield srv


def _in_background(fn, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(zip(("resp", "job"), fn(*args), strict=True)))
    thread.start()
    return thread, out


@pytest.mark.parametrize("contract", list(KEYS))
def test_budget_a_replay_is_answered_while_its_own_reservation_holds_the_budget(idle, contract):
    # All four contracts look the Idempotency-Key up before the budget: a replay of an accepted job
    # is never refused for the money that job itself holds (three of them used to answer 402).
    core = idle.app.state.core
    owner = core.authenticate(KEYS[contract])
    synchronous = contract in ("depicta", "openai")  # these wait for the job: run them aside
    first = _in_background(_request, idle, contract, "order-9", False)
    deadline = time.monotonic() + 30
    while not core.list_jobs(owner, contract):
        assert time.monotonic() < deadline, "the job was never queued"
        time.sleep(0.05)
    job = core.list_jobs(owner, contract)[0].id
    assert core.balance(owner) == pytest.approx(0.0, abs=1e-9)  # its reservation holds it all
    replay = _in_background(_request, idle, contract, "order-9", False)
    if not synchronous:
        replay[0].join(30)
        assert replay[1]["resp"].status_code == 200 and replay[1]["job"] == job, replay[1]["resp"].text
    else:
        replay[0].join(1.0)
        assert replay[0].is_alive(), replay[1]  # waiting for the same job, not refused
    core.cancel(job, owner)
    for thread, _ in (first, replay):
        thread.join(30)
    REPLAYS["replayed_at_zero_balance"].add(contract)
    _record_replays()
    if synchronous:
        resp = replay[1]["resp"]
        assert resp.status_code == 409 and "cancelled" in resp.text, resp.text  # the job, cancelled
    assert core.balance(owner) == pytest.approx(1.0, abs=1e-9)  # a cancelled job costs nothing


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_budget_concurrent_http_submissions_from_one_key(request, tmp_path, backend):
    # 12 clients of one 10 USD key submit at once; each job reserves 3 USD (30 s at 360 USD/h).
    extra = {}
    if backend == "redis":
        url, prefix = _redis_of_this_test(request)
        extra = {"redis_url": url, "redis_prefix": prefix}
    settings = make_settings(
        tmp_path, workers=0, api_keys="k", key_budgets_usd={"k": 10.0}, price_per_gpu_hour_usd=360.0,
        default_job_seconds=30.0, **extra,
    )  # fmt: skip
    with _serving(settings, ready=False) as srv:
        body = {"prompt": "x", "input_image": data_url(png_bytes())}
        barrier = threading.Barrier(12)
        codes: list[int] = []

        def submit() -> None:
            barrier.wait()
            codes.append(srv.post("/edit/image/v1", json=body, headers=AUTH_K).status_code)

        threads = [threading.Thread(target=submit) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(codes) == [200] * 3 + [402] * 9
        core = srv.app.state.core
        left = core.balance(core.authenticate("k"))
        assert left == pytest.approx(1.0, abs=1e-9)
        record(
            f"budget_concurrent_{backend}",
            {"clients": 12, "budget_usd": 10.0, "reserve_usd_each": 3.0, "admitted": codes.count(200),
             "refused_402": codes.count(402), "left_usd": left, "overspent_usd": max(0.0, -left)},
        )  # fmt: skip
