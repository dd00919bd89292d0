"""The server's own loops when the store's disk is full: they pause and say so once per pause,
instead of failing (and logging, and re-sending webhooks) every fraction of a second."""

from __future__ import annotations

import logging
import sqlite3
import time
from types import SimpleNamespace

from server.store import WebhookDelivery
from tests.support.server_harness import WebhookReceiver, make_settings

FULL = "database or disk is full"


def _wait(what, predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_supervisor_backs_off_a_failing_tick_and_logs_once_per_pause(tmp_path, caplog):
    """A tick that keeps failing is retried ever later, with one line (one traceback) in all."""
    from server.supervisor import Supervisor

    class FullStore:
        failing = True
        calls = 0

        def overdue(self, timeout_s):
            return []

        def requeue_expired(self, max_attempts):
            FullStore.calls += 1
            if FullStore.failing:
                raise sqlite3.OperationalError(FULL)
            return []

    settings = make_settings(tmp_path, role="api", workers=0)
    supervisor = Supervisor(settings, FullStore(), files=None, job_timeout_s=5)
    supervisor._next_cleanup = float("inf")
    caplog.set_level(logging.INFO, logger="retouch.supervisor")
    supervisor.start()
    try:
        time.sleep(4.2)
        failures = [r for r in caplog.records if "tick failed" in r.getMessage()]
        tries_while_failing = FullStore.calls
        FullStore.failing = False
        _wait("a working tick", lambda: any("works again" in r.getMessage() for r in caplog.records))
    finally:
        supervisor.stop()
    # Every 0.5 s that would be 8 tries and 8 tracebacks; with pauses of 1, 2, 4 s it is at most 3.
    assert 1 <= len(failures) == tries_while_failing <= 3
    assert failures[0].exc_info and not any(r.exc_info for r in failures[1:])  # one traceback


def test_webhook_whose_outcome_cannot_be_stored_is_not_resent_every_poll(tmp_path, caplog):
    """The receiver accepted the webhook but the outbox could not record it (full disk): the row
    stays due, and without a pause it would be posted again every 0.2 s until space is freed."""
    from server.webhooks import WebhookSender

    receiver = WebhookReceiver()
    delivery = WebhookDelivery(
        id="msg_job_1_completed",
        job_id="job_1",
        event="job.completed",
        url=receiver.url,
        contract="imagepipeline",
        attempts=0,
        state="pending",
        next_attempt_at=0.0,
    )

    class FullOutbox:
        def due_deliveries(self, limit):
            return [delivery]

        def get_job(self, job_id):
            return SimpleNamespace(id=job_id)

        def delivery_done(self, delivery_id):
            raise sqlite3.OperationalError(FULL)

    settings = make_settings(tmp_path)
    from server.secret_bootstrap import bootstrap_secrets

    bootstrap_secrets(settings)

    class Bodies:
        def webhook_body(self, record):
            return {"id": record.id}

        def after_webhook(self, record):
            pass

    sender = WebhookSender(FullOutbox(), settings, {"imagepipeline": Bodies()})
    caplog.set_level(logging.WARNING, logger="retouch.webhooks")
    sender.start()
    try:
        _wait("the first post", lambda: receiver.calls >= 1)
        time.sleep(2.0)  # ten polls of the outbox
    finally:
        sender.stop()
        receiver.close()
    assert receiver.calls == 1
    assert sum("outbox paused" in r.getMessage() for r in caplog.records) == 1


def test_result_met_by_enospc_goes_back_to_the_queue_then_fails_retryable_after_its_attempts(tmp_path):
    """The worker's own path, without a server: ENOSPC on the result hands the job back and pauses
    claims; on its last attempt the job fails as retryable STORAGE_FULL; no result file is left."""
    import errno

    from server.files import FileStore
    from server.jobs import EditJob, InputRef, JobMeta
    from server.store import SQLiteStore
    from server.worker import EditWorker
    from tests.support.fakes import FakeEngine
    from tests.support.server_harness import png_bytes

    class FullResultsDisk(FileStore):
        def write(self, relative, data):
            if relative.startswith("results/"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(relative, data)

    settings = make_settings(tmp_path, max_attempts=2)
    store = SQLiteStore(tmp_path / "db.sqlite3")
    files = FullResultsDisk(tmp_path / "files")
    files.write("inputs/job_1/0", png_bytes())
    job = EditJob(prompt="p", images=[InputRef(path="inputs/job_1/0")])
    store.add_job("job_1", job, JobMeta(contract="imagepipeline", owner="o"), max_queued=10)
    worker = EditWorker(settings, store, files, "w0")
    worker.registry = SimpleNamespace(limits=SimpleNamespace(job_timeout_s=30))
    worker.engine = FakeEngine(None)

    worker.run(store.claim("w0", lease_s=30))
    first = store.get_job("job_1")
    assert first.status.value == "queued" and first.attempts == 1
    assert not worker.may_claim()  # paused: the next job would meet the same full disk

    worker.run(store.claim("w0", lease_s=30))
    last = store.get_job("job_1")
    assert (last.status.value, last.failure_reason_code, last.retryable) == ("failed", "STORAGE_FULL", True)
    assert list((tmp_path / "files" / "results").rglob("*")) == []
    assert not (tmp_path / "files" / "inputs" / "job_1").exists()  # a failed job's inputs go
