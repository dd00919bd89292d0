"""GPU worker: one process per device. ``setup`` loads the engine once; ``run`` does one job.

The worker is the only place the engine is imported (lazily, via ``pipelines.EditEngine`` or the
configured factory), so a CUDA fault or a crash here never takes the API process down.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time

from pipelines.errors import EngineError, GPUOutOfMemoryError, JobCancelledError

from . import memory_report, metrics
from .accounting import charge_usd
from .files import FileStore
from .job_events import EventSender
from .jobs import JobRecord, Progress, ResultFile
from .settings import Settings
from .storage import StorageGuard, is_disk_full
from .store import JobStore

log = logging.getLogger("retouch.worker")

# Progress is written at most this often (plus on every stage change): cheap for the worker.
PROGRESS_INTERVAL_S = 0.5
# After a result could not be stored for want of space, the worker takes no job for this long,
# doubling on each further failure up to the maximum (a floor set too low must not spin the GPU).
STORAGE_BACKOFF_S = (2.0, 60.0)


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
        # tells the API's waiting requests (server/job_events.py) that a job moved on
        self.events = EventSender(settings)
        self.engine = None
        self.registry = None
        self.faults = FaultHook(settings.fault_injection)
        # SIGTERM: take no new job; the running one may finish until stop_deadline, then goes back.
        self.stopping = threading.Event()
        self.stop_deadline = float("inf")
        self.storage = StorageGuard(settings)
        self.storage_backoff_s = 0.0
        self.claim_after = 0.0  # monotonic; set when a full disk sent a job back to the queue
        self._storage_shortage: str | None = None
        self._reported: list[str] | None = None  # the loaded edit models last published

    def begin_stop(self) -> None:
        self.stop_deadline = time.monotonic() + self.settings.shutdown_grace_s
        self.stopping.set()

    def setup(self) -> None:
        from pipelines import load_registry

        self.registry = load_registry(self.settings.weights).holding(self.settings.edit_model)
        self.engine = load_factory(self.settings.engine_factory)(self.registry)
        plan = getattr(getattr(self.engine, "edit", None), "memory_plan", None)
        if plan is not None:
            memory_report.publish(self.settings, self.worker_id, self._plan_summary(plan))
        self._report_models()

    def _plan_summary(self, plan) -> dict:
        models = getattr(self.engine, "models", None)
        sides = models.largest_sides() if models is not None else {}
        return plan.summary() | ({"largest_side_by_model": sides} if sides else {})

    def _report_models(self) -> None:
        """Which edit models this worker has loaded (they change when it swaps, weights.yaml swap)."""
        models = getattr(self.engine, "models", None)
        if models is None:
            return
        resident = models.names
        if resident != self._reported:
            memory_report.publish_models(self.settings, self.worker_id, resident, models.load_seconds)
            plan = getattr(self.engine.edit, "memory_plan", None)
            if plan is not None and self._reported is not None:  # the plan of the model now running
                memory_report.publish(self.settings, self.worker_id, self._plan_summary(plan))
            self._reported = resident

    def run(self, record: JobRecord) -> None:
        try:
            self._run(record)
        finally:  # completed, failed, handed back: a waiting request reads the store again now
            self._report_models()  # a swap happens whatever the job's outcome
            self.events.publish(record.id)

    def _run(self, record: JobRecord) -> None:
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
            self.events.publish(job_id)  # progress (and the preview written before it) for streams
            self.faults.fire(record.job.params.prompt, stage, step)
            if now > self.stop_deadline:
                raise ShutdownHandBack("the server is shutting down; the job goes back to the queue")
            if now > deadline:
                raise JobTimeoutError(f"the job ran longer than {self.registry.limits.job_timeout_s:g} s")

        try:
            if record.job.params.partial_images > 0:
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
        except Exception as exc:
            if is_disk_full(exc):
                self._storage_fault(record)
                return
            log.exception("job failed in the worker")
            metrics.record_job("failed")
            self.store.fail(job_id, "INTERNAL_ERROR", "the worker failed on this job; it was logged", True)
            return
        seconds = time.monotonic() - started
        # a swap is this job's wait, not its work: the ETA fit learns from the rest (server/eta.py)
        work_seconds = max(seconds - result.timings.get("swap", 0.0), 0.0)
        results = []
        warnings = record.warnings + [w for w in result.warnings if w not in record.warnings]
        timings = {stage: round(t, 4) for stage, t in result.timings.items()}
        try:
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
            # charged at the price in force now, once: only the winning terminal write charges
            cost = charge_usd(seconds, self.settings.price_per_gpu_hour_usd)
            completed = self.store.complete(
                job_id, results, result.seed, work_seconds, warnings, cost_usd=cost
            )
        except Exception as exc:
            # Never leave the job "processing" behind a worker that gave up on it: it goes back to
            # the queue (full disk) or fails; the files of this attempt go either way.
            for r in results:
                self.files.delete(r.path)
            if is_disk_full(exc):
                self._storage_fault(record)
            else:
                log.exception("could not store the job's result")
                metrics.record_job("failed")
                message = "the result could not be stored; it was logged"
                self.store.fail(job_id, "INTERNAL_ERROR", message, True)
            return
        self.storage_backoff_s = 0.0
        if completed:
            self._drop_inputs(job_id)
            log.info("job completed", extra={"seconds": round(seconds, 3), "timings": timings})
            metrics.record_job("completed", record.kind, {**result.timings, "total": seconds})
        else:
            metrics.record_job("superseded")
            # An earlier attempt (or a cancel) already ended this job: its outcome stays the only one.
            for r in results:
                self.files.delete(r.path)

    def _storage_fault(self, record: JobRecord) -> None:
        """The disk filled up under a running job (another process, a race with the floor check):
        the job goes back to the queue, or fails as retryable once it has had its attempts, and
        this worker takes no job for a growing while."""
        low, high = STORAGE_BACKOFF_S
        self.storage_backoff_s = min(max(self.storage_backoff_s * 2, low), high)
        self.claim_after = time.monotonic() + self.storage_backoff_s
        try:
            if record.attempts >= self.settings.max_attempts:
                message = "the data disk was full when the result was written; retry later"
                self.store.fail(record.id, "STORAGE_FULL", message, True)
                self._drop_inputs(record.id)
                metrics.record_job("failed")
                outcome = "failed it as retryable"
            elif self.store.hand_back(record.id, self.worker_id):
                metrics.record_job("handed_back")
                outcome = "handed it back to the queue"
            else:  # cancelled, or re-run elsewhere after a lost lease: its outcome is not ours to write
                metrics.record_job("superseded")
                outcome = "it was no longer this worker's"
        except Exception as exc:  # the store's own disk is full too: the lease runs out instead
            if not is_disk_full(exc):
                raise
            outcome = "could not tell the store; its lease will run out"
        log.warning(
            "the data disk filled up under the job: %s; taking no job for %g s",
            outcome,
            self.storage_backoff_s,
        )

    def may_claim(self) -> bool:
        """False while the disk is below the floor (or just after it filled under a job): a job
        taken now could not store its result. Logs once when that starts and once when it ends."""
        if time.monotonic() < self.claim_after:
            return False
        shortage = self.storage.shortage()
        if shortage != self._storage_shortage:
            if shortage is not None:
                log.warning("taking no job: %s", shortage)
            else:
                log.info("the data disk has room again; taking jobs")
            self._storage_shortage = shortage
        return shortage is None

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
                return
            self.events.publish(job_id)  # a stream sends it now

        return write

    def _drop_inputs(self, job_id: str) -> None:
        self.files.delete_tree(f"inputs/{job_id}")
