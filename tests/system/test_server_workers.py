"""Worker supervision and durability: crashes, hangs, restarts of the whole server; webhooks."""

from __future__ import annotations

import base64
import json

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.support.server_harness import AsgiServer, WebhookReceiver, make_settings, png_bytes

IMG = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def _submit(srv, prompt: str, **extra) -> str:
    r = srv.post("/edit/image/v1", json={"prompt": prompt, "input_image": IMG, **extra})
    assert r.status_code == 200, r.text
    return r.json()["job_id"]


def test_server_restart_keeps_queued_jobs(tmp_path):
    first = AsgiServer(make_settings(tmp_path, workers=0))
    ids = [_submit(first, f"job {i}") for i in range(3)]
    assert all(first.get(f"/edit/image/v1/status/{i}").json()["status"] == "queued" for i in ids)
    first.close()
    second = AsgiServer(make_settings(tmp_path, workers=1))
    try:
        assert [second.wait_status(i)["status"] for i in ids] == ["completed"] * 3
    finally:
        second.close()


def test_server_worker_crash_is_survived(tmp_path):
    srv = AsgiServer(make_settings(tmp_path, max_attempts=2))
    try:
        srv.wait_ready()
        crashed = _submit(srv, "crash the worker")
        st = srv.wait_status(crashed, timeout=40)
        assert st["status"] == "failed" and st["failure_reason_code"] == "WORKER_LOST" and st["retryable"]
        assert srv.get("/healthz").status_code == 200
        assert srv.wait_status(_submit(srv, "afterwards"), timeout=40)["status"] == "completed"
    finally:
        srv.close()


def test_server_idle_worker_killed_does_not_block_submissions(tmp_path):
    import os
    import signal
    import time

    srv = AsgiServer(make_settings(tmp_path))
    try:
        srv.wait_ready()
        assert srv.wait_status(_submit(srv, "first"))["status"] == "completed"
        # an idle worker killed outright (OOM killer, kill -9) while it waits for work
        os.kill(srv.app.state.supervisor.slots[0].process.pid, signal.SIGKILL)
        time.sleep(0.3)
        started = time.monotonic()
        job = _submit(srv, "after the kill")  # the API still answers at once...
        assert time.monotonic() - started < 5
        assert (
            srv.wait_status(job, timeout=40)["status"] == "completed"
        )  # ...and the restarted worker runs it
    finally:
        srv.close()


def test_server_hung_job_times_out(tmp_path):
    settings = make_settings(tmp_path, hard_timeout_grace_s=0.5)
    settings.weights = str(tmp_path / "weights.yaml")
    (tmp_path / "weights.yaml").write_text(
        (tmp_path / "weights.yaml").read_text().replace("job_timeout_s: 5", "job_timeout_s: 1")
    )
    srv = AsgiServer(settings)
    try:
        srv.wait_ready()
        st = srv.wait_status(_submit(srv, "hang forever"), timeout=30)
        assert st["status"] == "failed" and st["failure_reason_code"] == "JOB_TIMEOUT"
        assert srv.wait_status(_submit(srv, "next one"), timeout=40)["status"] == "completed"
    finally:
        srv.close()


@pytest.fixture
def receiver():
    r = WebhookReceiver(fail_first=1)
    yield r
    r.close()


def test_server_webhook_signed_retried_once_delivered(tmp_path, receiver):
    srv = AsgiServer(make_settings(tmp_path))
    try:
        job_id = _submit(srv, "hooked", callback_url=receiver.url)
        status = srv.wait_status(job_id)
        assert receiver.done.wait(20), "webhook never delivered"
        assert receiver.calls == 2  # one failure (500), then the retry
        (h1, b1), (h2, b2) = receiver.got
        assert h1["webhook-id"] == h2["webhook-id"] == f"msg_{job_id}_completed"
        payload = Webhook(srv.settings.webhook_secret).verify(b2, h2)
        assert payload["job_id"] == job_id and payload["status"] == "completed"
        # the webhook carries the status body, less the status's report on the webhook itself
        assert set(payload) == set(status) - {"webhook"}
        with pytest.raises(WebhookVerificationError):
            Webhook(srv.settings.webhook_secret).verify(b2.replace(b"completed", b"failed"), h2)
    finally:
        srv.close()
    # a restart does not send it again
    srv = AsgiServer(make_settings(tmp_path, workers=0))
    try:
        assert srv.app.state.core.store.due_deliveries(10) == []
        assert json.loads(b2)["job_id"] == job_id
    finally:
        srv.close()


def test_cleanup_sweeps_stale_inputs_and_previews_but_keeps_fresh_ones(tmp_path):
    import os
    import time

    srv = AsgiServer(make_settings(tmp_path, workers=0, result_ttl_s=60))
    try:
        root = srv.app.state.core.inputs.files.root
        old = time.time() - 120
        for rel in ("inputs/job_gone", "previews/job_gone", "previews/job_streaming"):
            (root / rel).mkdir(parents=True)
            (root / rel / "0-0.png").write_bytes(b"x")
        for rel in ("inputs/job_gone", "previews/job_gone"):
            os.utime(root / rel, (old, old))
        srv.app.state.supervisor.cleanup()
        assert not (root / "inputs/job_gone").exists() and not (root / "previews/job_gone").exists()
        assert (root / "previews/job_streaming/0-0.png").exists()  # a stream in progress keeps its files
    finally:
        srv.close()


def test_cleanup_removes_abandoned_part_files_but_not_a_write_in_progress(tmp_path):
    """A worker killed mid-write (the watchdog's SIGKILL) leaves a .part file nobody renames."""
    import os
    import time

    srv = AsgiServer(make_settings(tmp_path, workers=0))
    try:
        root = srv.app.state.core.inputs.files.root
        abandoned, writing = root / "results/job_a/1-0.png.part", root / "uploads/up_b/photo.png.part"
        for part in (abandoned, writing):
            part.parent.mkdir(parents=True)
            part.write_bytes(b"half")
        old = time.time() - 2 * 3600
        os.utime(abandoned, (old, old))
        srv.app.state.supervisor.cleanup()
        assert not abandoned.exists() and writing.exists()
    finally:
        srv.close()
