"""The worker process around ``EditWorker``: its heartbeat thread, its pulse and the claim loop.

Liveness has two readers. The store's heartbeat (and the running job's lease) tells every pod that
this worker is ready; the ``Pulse``, a few bytes of memory shared with the supervisor, tells the
supervisor that the process still runs, without a store round trip, so a slow or full store never
makes a live worker look hung. Both come from one thread, never from the denoise loop, so a long
step (a 4k refine on a slow GPU) beats like an idle worker; only a stopped or frozen process goes
silent.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from . import metrics
from .files import FileStore
from .logging_setup import configure_logging, job_context
from .settings import Settings
from .storage import is_disk_full
from .store import JobStore, SQLiteStore, open_store
from .worker import STORAGE_BACKOFF_S, EditWorker

log = logging.getLogger("retouch.worker")


class Pulse:
    """When the worker's heartbeat thread last ran (monotonic clock, shared by all processes of the
    machine) and whether the worker is ready. Made by the supervisor, handed to the spawned worker."""

    def __init__(self, context):
        self._beat_at = context.RawValue("d", 0.0)
        self._ready = context.RawValue("b", 0)

    def beat(self, ready: bool) -> None:
        self._ready.value = int(ready)
        self._beat_at.value = time.monotonic()

    def age(self) -> float | None:
        """Seconds since the last beat; None before the first one."""
        at = self._beat_at.value
        return None if at == 0.0 else time.monotonic() - at

    @property
    def ready(self) -> bool:
        return bool(self._ready.value)


class _Heartbeat(threading.Thread):
    """Renews the lease of the running job and tells the API this worker is alive."""

    def __init__(self, worker: EditWorker, store: JobStore, parent_pid: int, pulse: Pulse | None):
        super().__init__(daemon=True, name="heartbeat")
        self.worker = worker
        self.store = store
        self.parent_pid = parent_pid
        self.pulse = pulse
        self.current: str | None = None
        self.state = "loading"  # "ready" once the engine is loaded
        self.wake = threading.Event()  # set to beat now (the engine just loaded) instead of later

    def run(self) -> None:
        settings = self.worker.settings
        interval = min(settings.lease_s / 3, settings.worker_hang_s / 4, 2.0)
        store_ok = True
        while True:
            if os.getppid() != self.parent_pid:
                os._exit(0)  # the API process is gone; an orphan worker would hold the GPU
            state = self.state
            try:
                self.store.worker_heartbeat(self.worker.worker_id, os.getpid(), state)
                metrics.report_gpu_memory(self.worker.worker_id)
                if self.current is not None:
                    self.store.renew_lease(self.current, self.worker.worker_id, settings.lease_s)
                if not store_ok:
                    log.info("heartbeat reaches the store again")
                store_ok = True
            except Exception:  # a full disk or a store outage: keep beating, log once per outage
                if store_ok:
                    log.warning("heartbeat could not reach the store", exc_info=True)
                store_ok = False
            if self.pulse is not None:
                # Ready for the supervisor only once the store says so too: /readyz reads both.
                self.pulse.beat(ready=state == "ready" and store_ok)
            self.wake.wait(interval)
            self.wake.clear()


def _pin_device(index: int, count: int) -> None:
    if count < 2:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(count)]
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]


def _open_store(settings: Settings) -> JobStore:
    """SQLite on one machine; on Redis this worker reads its pod's queue and its models' shared ones."""
    if not settings.redis_url:
        return SQLiteStore(settings.db_path, result_ttl_s=settings.result_ttl_s, workers=settings.workers)
    from pipelines import load_registry

    from .pods import held_models

    models = held_models(load_registry(settings.weights), settings.edit_model)
    return open_store(settings, server_id=settings.server_id, models=models)


def _wait_for_wake(wake, timeout: float):
    """Sleep until the API says a job was queued or ``timeout`` passes; returns the pipe, or None once
    the API end is gone (then plain polling goes on)."""
    if wake is None:
        time.sleep(timeout)
        return None
    try:
        if wake.poll(timeout):
            while wake.poll(0):  # several jobs queued while busy: one claim round serves them all
                wake.recv_bytes()
        return wake
    except (EOFError, OSError):
        return None


def _claim(worker: EditWorker, store: JobStore):
    """The next job, or None: none queued, the disk below its floor, or the claim itself met a full
    store (then no claim for a while, like a result that could not be stored)."""
    if not worker.may_claim():
        return None
    try:
        return store.claim(worker.worker_id, worker.settings.lease_s)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        worker.claim_after = time.monotonic() + STORAGE_BACKOFF_S[0]
        return None


def worker_main(
    settings_json: str, worker_id: str, index: int, parent_pid: int, wake=None, pulse: Pulse | None = None
) -> None:
    """Entry point of a spawned worker process."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings, process_name=worker_id)
    _pin_device(index, settings.workers)
    store = _open_store(settings)
    worker = EditWorker(settings, store, FileStore(settings.files_root), worker_id)
    heartbeat = _Heartbeat(worker, store, parent_pid, pulse)
    heartbeat.start()  # beats "loading" while the models load: a load that freezes is seen too
    worker.setup()
    heartbeat.state = "ready"
    heartbeat.wake.set()
    log.info("engine loaded; taking jobs")
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.begin_stop())
    waker = store.open_waker()  # Redis: jobs queued on any pod; None: this API's pipe (wake)
    while not worker.stopping.is_set():
        record = _claim(worker, store)
        if record is None:
            if waker is not None:
                waker.wait(settings.worker_poll_s)
            else:
                wake = _wait_for_wake(wake, settings.worker_poll_s)
            continue
        heartbeat.current = record.id
        try:
            with job_context(record.id):
                worker.run(record)
        finally:
            heartbeat.current = None
    # Stopped by SIGTERM: a job handed back mid-run is requeued now, not after its lease (the API
    # process may be stopping too, so its supervisor might not get to it).
    store.release_worker(worker_id)
    store.requeue_expired(settings.max_attempts)
    log.info("worker stopped (SIGTERM)")
