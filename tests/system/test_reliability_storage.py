"""A full disk is a state, not a crash: refusals in each contract's shape, /readyz and the metric say
so, a job met by ENOSPC goes back to the queue, and everything resumes once space is freed.

The disk is a 20 MB tmpfs the test mounts itself (root only; skipped otherwise) under a real
``retouch serve``; a ballast file fills it. The engine is the fake one with a gate, so a test can
fill the disk while a job is surely running and before its result is written.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import requests

from benchmarks.reliability import record
from tests.support.disk_harness import (  # noqa: F401 (small_disk is a fixture)
    BEARER,
    IMG,
    MB,
    Client,
    data_dir_on,
    fill,
    part_files,
    result_files,
    serve,
    small_disk,
    wait_for,
)
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)
from tests.support.server_harness import png_bytes


def refusals(client: Client) -> dict[str, requests.Response]:
    """One write-bound request of every contract (and both upload endpoints)."""
    picture = {"file": ("photo.png", png_bytes(), "image/png")}
    return {
        "imagepipeline_edit": client.post("/edit/image/v1", json={"prompt": "x", "input_image": IMG}),
        "imagepipeline_upload": client.post("/upload/image/v1", files=picture),
        "fashn_run": client.post(
            "/v1/run", json={"model_name": "edit", "inputs": {"image": IMG, "prompt": "x"}}, headers=BEARER
        ),
        "depicta_edit": client.post(
            "/v1/edit/image", json={"prompt": "x", "input_image_url": IMG}, headers=BEARER
        ),
        "depicta_upload": client.post(
            "/v1/upload", files={"image": ("photo.png", png_bytes(), "image/png")}, headers=BEARER
        ),
        "openai_edit": client.post(
            "/v1/images/edits",
            json={"model": "qwen-image-edit", "prompt": "x", "images": [{"image_url": IMG}]},
            headers=BEARER,
        ),
    }


def assert_storage_full(name: str, resp: requests.Response) -> None:
    assert resp.status_code == 503, f"{name}: {resp.status_code} {resp.text}"
    assert resp.headers.get("Retry-After", "").isdigit(), name
    body = resp.json()
    assert "/disk" not in resp.text and "Traceback" not in resp.text  # no path, no traceback
    if name.startswith("imagepipeline"):
        assert body["error_code"] == "STORAGE_FULL"
    elif name.startswith("openai"):
        assert set(body) == {"error"} and body["error"]["code"] == "storage_full"
    elif name.startswith("fashn"):
        assert set(body) == {"error", "message"} and "STORAGE_FULL" in body["message"]
    else:  # depicta
        assert body["error"] == "service_unavailable" and "STORAGE_FULL" in body["message"]


def test_disk_below_the_floor_refuses_writes_in_each_contract_and_recovers(
    tmp_path,
    tiny_weights,
    monkeypatch,
    small_disk,  # noqa: F811 (the fixture)
):
    data = data_dir_on(small_disk, tmp_path)
    server = serve(tmp_path, tiny_weights, monkeypatch, data)
    client = Client(server)
    try:
        server.wait()
        first = client.submit("before the disk fills")
        assert client.wait_status(first, ("completed",))["status"] == "completed"
        assert client.storage_full_metric() == 0

        # A job holds the only worker and another waits behind it; then the disk drops below the floor.
        running = client.submit("gated: written while the disk is low")
        client.wait_status(running, ("processing",))
        waiting = client.submit("queued while the disk is low")
        ballast = fill(small_disk, leave=1 * MB)
        free_when_low = shutil.disk_usage(small_disk).free
        started = time.monotonic()
        answers = refusals(client)
        refused_ms = (time.monotonic() - started) * 1000 / len(answers)
        for name, resp in answers.items():
            assert_storage_full(name, resp)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"].startswith("STORAGE_FULL")
        assert "/disk" not in ready.text
        assert client.storage_full_metric() == 1

        # The running job still has room for its small result; the waiting one is not taken while low.
        server.gate.touch()
        assert client.wait_status(running, ("completed", "failed"))["status"] == "completed"
        time.sleep(2)  # several claim rounds of the idle worker
        assert client.status(waiting)["status"] == "queued"
        assert part_files(small_disk) == []

        ballast.unlink()
        freed = time.monotonic()
        wait_for("/readyz 200", lambda: client.get("/readyz").status_code == 200)
        recovered_s = time.monotonic() - freed
        assert client.wait_status(waiting, ("completed",))["status"] == "completed"
        after = client.submit("after space was freed")
        assert client.wait_status(after, ("completed",))["status"] == "completed"
        assert client.storage_full_metric() == 0
        jobs = [first, running, waiting, after]
        assert all(len(result_files(data, job)) == 1 for job in jobs)
        assert part_files(small_disk) == []
    finally:
        server.gate.touch()
        server.stop()
    record(
        "storage_floor",
        {
            "disk_mb": 20,
            "floor_mb": 4,
            "free_mb_when_low": round(free_when_low / MB, 2),
            "refusals_503_storage_full": sum(r.status_code == 503 for r in answers.values()),
            "contracts_refusing_in_own_shape": "depicta,fashn,imagepipeline,openai",
            "mean_refusal_ms": round(refused_ms, 1),
            "queued_job_taken_while_low": False,
            "readyz_after_freeing_s": round(recovered_s, 2),
            "jobs_lost": 0,
            "duplicate_results": 0,
            "part_files_left": 0,
        },
    )


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_disk_filled_under_a_running_job_sends_it_back_to_the_queue(
    tmp_path,
    tiny_weights,
    monkeypatch,
    small_disk,  # noqa: F811 (the fixture)
    store,
    request,
):
    """The files volume fills between the floor check and the result write (another process):
    the job goes back to the queue, not "processing" forever, and runs again once space is back."""
    env = {"RETOUCH_FILES_DIR": str(small_disk / "files")}
    prefix = None
    if store == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = unique_prefix()
        env |= {"RETOUCH_REDIS_URL": url, "RETOUCH_REDIS_PREFIX": prefix}
    data = tmp_path / "data"  # the database (SQLite) off the small disk: only the files fill up
    server = serve(tmp_path, tiny_weights, monkeypatch, data, **env)
    client = Client(server)
    try:
        server.wait()
        job = client.submit("gated: its result meets a full disk")
        client.wait_status(job, ("processing",))
        ballast = fill(small_disk, leave=0)
        server.gate.touch()
        filled = time.monotonic()
        back = client.wait_status(job, ("queued", "completed", "failed"), timeout=30)
        requeued_s = time.monotonic() - filled
        assert back["status"] == "queued"
        assert part_files(small_disk) == []
        assert result_files(small_disk / "files", job) == []
        assert client.get("/readyz").json()["reason"].startswith("STORAGE_FULL")
        time.sleep(2)
        assert client.status(job)["status"] == "queued"  # not re-run while the disk is full

        ballast.unlink()
        done = client.wait_status(job, ("completed", "failed"))
        assert done["status"] == "completed", done
        # One result, written by the second attempt: the first left nothing behind.
        files = result_files(small_disk / "files", job)
        assert len(files) == 1 and files[0].startswith("2-0."), files
        assert part_files(small_disk) == []
    finally:
        server.gate.touch()
        server.stop()
        if prefix is not None:
            delete_prefix(url, prefix)
    record(
        f"storage_enospc_{store}",
        {
            "job_state_after_enospc": back["status"],
            "back_in_queue_after_s": round(requeued_s, 2),
            "final_state": done["status"],
            "result_files": 1,
            "attempt_that_wrote_it": 2,
            "part_files_left": 0,
        },
    )


def test_full_database_disk_is_waited_out_without_a_crash(
    tmp_path,
    tiny_weights,
    monkeypatch,
    small_disk,  # noqa: F811 (the fixture)
):
    """Everything on the small disk, filled to the last byte while a job runs: the server stays up,
    says why it is not ready, logs its failing housekeeping sparingly and recovers by itself."""
    data = data_dir_on(small_disk, tmp_path)
    server = serve(tmp_path, tiny_weights, monkeypatch, data)
    client = Client(server)
    try:
        server.wait()
        job = client.submit("gated: the database disk fills under it")
        client.wait_status(job, ("processing",))
        ballast = fill(small_disk, leave=0)
        server.gate.touch()
        full_for = 8.0
        deadline = time.monotonic() + full_for
        while time.monotonic() < deadline:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"].startswith("STORAGE_FULL")
            time.sleep(0.5)
        assert server.proc.poll() is None
        ballast.unlink()
        done = client.wait_status(job, ("completed", "failed"))
        assert done["status"] == "completed", done
        assert len(result_files(data, job)) == 1
        assert part_files(small_disk) == []
        wait_for("/readyz 200", lambda: client.get("/readyz").status_code == 200)
        log = Path(server.log.name).read_text()  # before the stop, whose SIGTERM ends the worker
    finally:
        server.gate.touch()
        server.stop()
    tick_failures = log.count("supervisor tick failed")
    worker_exits = log.count("exited with code")
    assert worker_exits == 0
    # Before: a traceback every 0.5 s (16 in 8 s). Now: one line per doubling pause.
    assert tick_failures <= 5
    record(
        "storage_db_full",
        {
            "seconds_full": full_for,
            "supervisor_tick_failure_lines": tick_failures,
            "worker_exits": worker_exits,
            "final_state": done["status"],
            "result_files": 1,
            "part_files_left": 0,
        },
    )


def test_disk_full_errors_are_recognised_and_the_floor_names_no_path(tmp_path):
    from server.settings import Settings
    from server.storage import StorageGuard, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    free = shutil.disk_usage(tmp_path).free
    guard = StorageGuard(Settings(data_dir=tmp_path, min_free_bytes=free * 2))
    reason = guard.shortage()
    assert reason is not None and str(tmp_path) not in reason
    assert len(guard.volumes) == 1  # files and database on one disk: one floor
    assert StorageGuard(Settings(data_dir=tmp_path, min_free_bytes=0)).shortage() is None
