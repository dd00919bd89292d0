"""GPU worker: one process per device. ``setup`` loads the engine once; ``run`` does one job.

The worker is the only place the engine is imported (lazily, via ``pipelines.EditEngine`` or the
configured factory), so a CUDA fault or a crash here never takes the API process down.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time

from pipelines.errors import EngineError, GPUOutOfMemoryError, JobCancelledError

from . import metrics
from .files import FileStore
from .jobs import JobRecord, Progress, ResultFile
from .logging_setup import configure_logging, job_context
from .settings import Settings
from .store import JobStore, SQLiteStore, open_store

log = logging.getLogger("retouch.worker")

# Progress is written at most this often (plus on every stage change): cheap for the worker.
PROGRESS_INTERVAL_S = 0.5


class ShutdownHandBack(JobCancelledError):
    """Raised between steps when the shutdown grace period is over: the job goes back to the queue."""


class FaultHook:
    """Test-only fault injection (``RETOUCH_FAULT_INJECTION="oom:MARKER"``): a job whose prompt holds
    MARKER meets the fault at its first denoise step, inside the real engine's loop.

    "oom" raises the CUDA allocator's own exception when torch is loaded (so the engine's OOM path
    runs: cache emptied, GPUOutOfMemoryError), else the engine's error.
    """

    def __init__(self, spec: str | None):
        self.rules = [tuple(item.split(":", 1)) for item in (spec or "").split(",") if ":" in item]

    def fire(self, prompt: str, stage: str, step: int) -> None:
        for fault, marker in self.rules:
            if marker in prompt and stage == "denoise" and step >= 1 and fault == "oom":
                torch = sys.modules.get("torch")  # never imported here: only present if the engine loaded it
                if torch is not None:
                    raise torch.cuda.OutOfMemoryError(
                        "CUDA out of memory (injected by RETOUCH_FAULT_INJECTION)"
                    )
                raise GPUOutOfMemoryError("the GPU ran out of memory for this job; try a smaller size")


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
        self.faults = FaultHook(settings.fault_injection)
        # SIGTERM: take no new job; the running one may finish until stop_deadline, then goes back.
        self.stopping = threading.Event()
        self.stop_deadline = float("inf")

    def begin_stop(self) -> None:
        self.stop_deadline = time.monotonic() + self.settings.shutdown_grace_s
        self.stopping.set()

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
        if record.attempts <= 1:
            metrics.record_queue_wait(time.time() - record.created_at)
        log.info("job started", extra={"kind": record.kind, "attempt": record.attempts})
        last = {"stage": None, "at": 0.0}

        def on_progress(stage: str, step: int, total: int) -> None:
            now = time.monotonic()
            if stage == last["stage"] and now - last["at"] < PROGRESS_INTERVAL_S and step < total:
                return
            last.update(stage=stage, at=now)
            if self.store.set_progress(job_id, self.worker_id, Progress(stage=stage, step=step, total=total)):
                raise JobCancelledError("the job was cancelled")
            self.faults.fire(record.job.prompt, stage, step)
            if now > self.stop_deadline:
                raise ShutdownHandBack("the server is shutting down; the job goes back to the queue")
            if now > deadline:
                raise JobTimeoutError(f"the job ran longer than {self.registry.limits.job_timeout_s:g} s")

        try:
            if record.job.partial_images > 0:
                result = self.engine.run(spec, on_progress, self._preview_writer(job_id))
            else:
                result = self.engine.run(spec, on_progress)
        except JobCancelledError:
            current = self.store.get_job(job_id)
            if current is not None and current.cancel_requested:
                self.store.fail(job_id, "CANCELLED", "cancelled while running", False)
                log.info("job cancelled while running")
            cancelled = current is not None and current.cancel_requested
            metrics.record_job("cancelled" if cancelled else "handed_back")  # lost lease or shutdown
            return  # otherwise another worker owns the job now; it writes the outcome
        except EngineError as exc:
            self.store.fail(job_id, exc.code, exc.message, exc.retryable)
            self._drop_inputs(job_id)
            log.warning("job failed", extra={"code": exc.code, "error": exc.message})
            metrics.record_job("failed")
            return
        except Exception:
            log.exception("job failed in the worker")
            metrics.record_job("failed")
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
                    revised_prompt=result.revised_prompt,
                )
            )
        warnings = record.warnings + [w for w in result.warnings if w not in record.warnings]
        timings = {stage: round(t, 4) for stage, t in result.timings.items()}
        if self.store.complete(job_id, results, result.seed, seconds, warnings):
            self._drop_inputs(job_id)
            log.info("job completed", extra={"seconds": round(seconds, 3), "timings": timings})
            metrics.record_job("completed", record.kind, {**result.timings, "total": seconds})
        else:
            metrics.record_job("superseded")
            # An earlier attempt (or a cancel) already ended this job: its outcome stays the only one.
            for r in results:
                self.files.delete(r.path)

    def _preview_writer(self, job_id: str):
        """Previews go to files the API process polls: previews/{job_id}/{image}-{partial}.{format}.

        Written in the engine's thread: a preview is a few hundred KB and FileStore.write renames a
        finished file into place, so this costs about a millisecond of the denoise loop and readers
        never see half a picture. A failed write loses a preview, never the job."""

        def write(image_index: int, partial_index: int, preview) -> None:
            try:
                name = f"previews/{job_id}/{image_index}-{partial_index}.{preview.format}"
                self.files.write(name, preview.data)
            except OSError:
                log.warning("could not write a preview", exc_info=True)

        return write

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
            metrics.report_gpu_memory(self.worker.worker_id)
            if self.current is not None:
                self.store.renew_lease(self.current, self.worker.worker_id, self.worker.settings.lease_s)
            time.sleep(interval)


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

    models = held_models(load_registry(settings.weights))
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


def worker_main(settings_json: str, worker_id: str, index: int, parent_pid: int, wake=None) -> None:
    """Entry point of a spawned worker process."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings, process_name=worker_id)
    _pin_device(index, settings.workers)
    store = _open_store(settings)
    worker = EditWorker(settings, store, FileStore(settings.files_root), worker_id)
    store.worker_heartbeat(worker_id, os.getpid(), "loading")
    worker.setup()
    log.info("engine loaded; taking jobs")
    heartbeat = _Heartbeat(worker, store, parent_pid)
    heartbeat.start()
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.begin_stop())
    waker = store.open_waker()  # Redis: jobs queued on any pod; None: this API's pipe (wake)
    while not worker.stopping.is_set():
        record = store.claim(worker_id, settings.lease_s)
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
