"""GPU worker: one process per device. ``setup`` loads the engine once; ``run`` does one job.

The worker is the only place the engine is imported (lazily, via ``pipelines.EditEngine`` or the
configured factory), so a CUDA fault or a crash here never takes the API process down.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
import traceback

from pipelines.errors import EngineError, JobCancelledError

from .files import FileStore
from .jobs import JobRecord, Progress, ResultFile
from .settings import Settings
from .store import JobStore, SQLiteStore

log = logging.getLogger("retouch.worker")

# Progress is written at most this often (plus on every stage change): cheap for the worker.
PROGRESS_INTERVAL_S = 0.5


class JobTimeoutError(EngineError):
    code = "JOB_TIMEOUT"
    retryable = True


def load_factory(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "EditEngine")


class EditWorker:
    """The worker contract: ``setup()`` once, then ``run(record)`` per claimed job."""

    def __init__(self, settings: Settings, store: JobStore, files: FileStore, worker_id: str):
        self.settings = settings
        self.store = store
        self.files = files
        self.worker_id = worker_id
        self.engine = None
        self.registry = None

    def setup(self) -> None:
        from pipelines import load_registry

        self.registry = load_registry(self.settings.weights)
        self.engine = load_factory(self.settings.engine_factory)(self.registry)

    def run(self, record: JobRecord) -> None:
        job_id = record.id
        try:
            spec = record.job.to_spec(self.files.root)
        except OSError:
            self.store.fail(job_id, "INPUT_EXPIRED", "the job's input files are gone", False)
            return
        started = time.monotonic()
        deadline = started + self.registry.limits.job_timeout_s
        last = {"stage": None, "at": 0.0}

        def on_progress(stage: str, step: int, total: int) -> None:
            now = time.monotonic()
            if stage == last["stage"] and now - last["at"] < PROGRESS_INTERVAL_S and step < total:
                return
            last.update(stage=stage, at=now)
            if self.store.set_progress(job_id, self.worker_id, Progress(stage=stage, step=step, total=total)):
                raise JobCancelledError("the job was cancelled")
            if now > deadline:
                raise JobTimeoutError(f"the job ran longer than {self.registry.limits.job_timeout_s:g} s")

        try:
            result = self.engine.run(spec, on_progress)
        except JobCancelledError:
            current = self.store.get_job(job_id)
            if current is not None and current.cancel_requested:
                self.store.fail(job_id, "CANCELLED", "cancelled while running", False)
            return  # otherwise another worker owns the job now; it writes the outcome
        except EngineError as exc:
            self.store.fail(job_id, exc.code, exc.message, exc.retryable)
            self._drop_inputs(job_id)
            return
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.store.fail(job_id, "INTERNAL_ERROR", "the worker failed on this job; it was logged", True)
            return
        seconds = time.monotonic() - started
        results = []
        for i, out in enumerate(result.images):
            path = self.files.write(f"results/{job_id}/{record.attempts}-{i}.{out.format}", out.data)
            results.append(
                ResultFile(
                    path=path,
                    mime_type=out.mime_type,
                    format=out.format,
                    width=out.width,
                    height=out.height,
                    sha256=out.sha256,
                    seed=out.seed,
                )
            )
        warnings = record.warnings + [w for w in result.warnings if w not in record.warnings]
        if self.store.complete(job_id, results, result.seed, seconds, warnings):
            self._drop_inputs(job_id)
        else:
            # An earlier attempt (or a cancel) already ended this job: its outcome stays the only one.
            for r in results:
                self.files.delete(r.path)

    def _drop_inputs(self, job_id: str) -> None:
        self.files.delete_tree(f"inputs/{job_id}")


class _Heartbeat(threading.Thread):
    """Renews the lease of the running job and tells the API this worker is alive."""

    def __init__(self, worker: EditWorker, store: JobStore, parent_pid: int):
        super().__init__(daemon=True, name="heartbeat")
        self.worker = worker
        self.store = store
        self.parent_pid = parent_pid
        self.current: str | None = None

    def run(self) -> None:
        interval = min(self.worker.settings.lease_s / 3, 2.0)
        while True:
            if os.getppid() != self.parent_pid:
                os._exit(0)  # the API process is gone; an orphan worker would hold the GPU
            self.store.worker_heartbeat(self.worker.worker_id, os.getpid(), "ready")
            if self.current is not None:
                self.store.renew_lease(self.current, self.worker.worker_id, self.worker.settings.lease_s)
            time.sleep(interval)


def _pin_device(index: int, count: int) -> None:
    if count < 2:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(count)]
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]


def worker_main(settings_json: str, worker_id: str, index: int, parent_pid: int) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {worker_id} %(levelname)s %(message)s")
    settings = Settings.model_validate_json(settings_json)
    _pin_device(index, settings.workers)
    store = SQLiteStore(settings.db_path, result_ttl_s=settings.result_ttl_s, workers=settings.workers)
    worker = EditWorker(settings, store, FileStore(settings.data_dir), worker_id)
    store.worker_heartbeat(worker_id, os.getpid(), "loading")
    worker.setup()
    log.info("engine loaded; taking jobs")
    heartbeat = _Heartbeat(worker, store, parent_pid)
    heartbeat.start()
    while True:
        record = store.claim(worker_id, settings.lease_s)
        if record is None:
            time.sleep(settings.worker_poll_s)
            continue
        heartbeat.current = record.id
        try:
            worker.run(record)
        finally:
            heartbeat.current = None
