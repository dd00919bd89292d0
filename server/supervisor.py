"""Runs in the API process: keeps the worker processes alive, returns lost jobs to the queue,
fails jobs over their time limit, and removes expired files."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

from . import metrics
from .files import FileStore
from .settings import Settings
from .store import JobStore
from .worker_process import Pulse, worker_main

log = logging.getLogger("retouch.supervisor")

# A worker is restarted at once the first time; one that keeps dying is restarted ever slower
# (up to settings.worker_restart_max_delay_s).
TICK_S = 0.5
# A failing tick (the database's disk is full, the store is away) is retried after a pause that
# doubles up to the maximum, with one log line per pause instead of a traceback per tick.
TICK_BACKOFF_S = (1.0, 15.0)
# A worker that is starting or loading its models may be silent this long (imports on a cold, busy
# machine, a long C call of a model load): killing it there would restart the same load forever.
# A ready worker silent for settings.worker_hang_s is stopped or frozen.
LOADING_ALLOWANCE_S = 60.0
PART_FILE_MAX_AGE_S = 3600.0


class _Slot:
    def __init__(self, index: int, worker_id: str):
        self.index = index
        self.worker_id = worker_id
        self.process: multiprocessing.Process | None = None
        # write end of this worker's wake-up pipe (non-blocking: a dead or busy worker never blocks us)
        self.wake_writer = None
        self.started_at = 0.0
        self.restart_delay = 0.0
        self.restart_at = 0.0
        self.pulse: Pulse | None = None


class Supervisor:
    def __init__(self, settings: Settings, store: JobStore, files: FileStore, job_timeout_s: float):
        self.settings = settings
        self.store = store
        self.files = files
        self.job_timeout_s = job_timeout_s
        # An API pod (role api) runs no GPU workers, only the housekeeping below.
        count = 0 if settings.role == "api" else settings.workers
        self.slots = [_Slot(i, f"{settings.server_id}-w{i}") for i in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="supervisor")
        self._context = multiprocessing.get_context("spawn")
        self._next_cleanup = 0.0
        # SIGTERM to the server: no worker takes a new job, none is restarted, /readyz answers 503.
        self.draining = False

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        self._thread.start()

    def drain(self) -> None:
        """Stop taking jobs: each worker finishes its job within the grace period or hands it back."""
        self.draining = True
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(timeout=self.settings.shutdown_grace_s + 5)
                if slot.process.is_alive():
                    slot.process.kill()
                self.store.release_worker(slot.worker_id)
                metrics.mark_worker_dead(slot.process.pid)

    def alive(self) -> int:
        """Worker processes that exist (beating or not): what a shutdown waits for."""
        return sum(1 for s in self.slots if s.process is not None and s.process.is_alive())

    def beating(self) -> int:
        """Workers that are ready and whose heartbeat is live: what /readyz counts as alive."""
        return sum(
            1
            for s in self.slots
            if s.process is not None
            and s.pulse is not None
            and s.pulse.ready
            and (s.pulse.age() or 0.0) <= self.settings.worker_hang_s
            and s.process.is_alive()
        )

    def wake(self) -> None:
        """Tell idle workers a job was queued, so they claim it now rather than at their next poll.

        A byte down a pipe rather than a multiprocessing.Event: Event.set() waits for sleeping
        processes to acknowledge and hangs forever once one of them was killed.
        """
        for slot in self.slots:
            writer = slot.wake_writer
            if writer is None:
                continue
            # Full (the worker is busy and polls when done) or gone (restarted with a new pipe): fine.
            with contextlib.suppress(OSError):
                writer.send_bytes(b"!")  # 5 bytes: below PIPE_BUF, so written whole or not at all

    def _spawn(self, slot: _Slot) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        os.set_blocking(writer.fileno(), False)
        if slot.wake_writer is not None:
            slot.wake_writer.close()
        slot.wake_writer = writer
        slot.pulse = Pulse(self._context)
        slot.process = self._context.Process(
            target=worker_main,
            args=(
                self.settings.model_dump_json(),
                slot.worker_id,
                slot.index,
                os.getpid(),
                reader,
                slot.pulse,
            ),
            name=slot.worker_id,
            daemon=True,
        )
        slot.process.start()
        reader.close()  # the child holds its own copy
        slot.started_at = time.monotonic()
        log.info("started worker %s (pid %s)", slot.worker_id, slot.process.pid)

    def _loop(self) -> None:
        backoff, failures = 0.0, 0
        while not self._stop.wait(backoff or TICK_S):
            try:
                self.tick()
            except Exception as exc:
                failures += 1
                low, high = TICK_BACKOFF_S
                backoff = min(max(backoff * 2, low), high)
                # The traceback once; then one line per (doubling) pause, not one per tick.
                log.warning(
                    "supervisor tick failed (%s); next try in %g s", exc, backoff, exc_info=failures == 1
                )
                continue
            if failures:
                log.info("supervisor tick works again after %d failed tries", failures)
            backoff, failures = 0.0, 0

    def tick(self) -> None:
        now = time.monotonic()
        self._kill_silent_workers(now)
        for slot in self.slots:
            process = slot.process
            if process is not None and not process.is_alive():
                log.warning("worker %s exited with code %s", slot.worker_id, process.exitcode)
                self.store.release_worker(slot.worker_id)
                metrics.mark_worker_dead(process.pid)
                short_lived = now - slot.started_at < 30
                slot.restart_delay = (
                    min(max(slot.restart_delay * 2, 1.0), self.settings.worker_restart_max_delay_s)
                    if short_lived
                    else 0
                )
                slot.restart_at = now + slot.restart_delay
                slot.process = None
            if slot.process is None and now >= slot.restart_at and not (self._stop.is_set() or self.draining):
                self._spawn(slot)
        for job_id, worker_id in self.store.overdue(self.job_timeout_s + self.settings.hard_timeout_grace_s):
            self.store.fail(job_id, "JOB_TIMEOUT", f"the job ran longer than {self.job_timeout_s:g} s", True)
            self._kill(worker_id)
        self.store.requeue_expired(self.settings.max_attempts)
        if now >= self._next_cleanup:
            self._next_cleanup = now + self.settings.cleanup_interval_s
            self.cleanup()

    def _kill_silent_workers(self, now: float) -> None:
        """SIGKILL workers whose heartbeat thread went silent (stopped, frozen): the next lines of
        the tick see them dead, release their leases (the job goes back to the queue) and restart."""
        for slot in self.slots:
            process, pulse = slot.process, slot.pulse
            if process is None or pulse is None or not process.is_alive():
                continue
            age = pulse.age()
            silent = now - slot.started_at if age is None else age  # None: not beaten yet
            limit = (
                self.settings.worker_hang_s
                if pulse.ready
                else max(self.settings.worker_hang_s, LOADING_ALLOWANCE_S)
            )
            if silent <= limit:
                continue
            log.warning(
                "worker %s (pid %s) missed its heartbeat for %.1f s: killing it (SIGKILL)",
                slot.worker_id,
                process.pid,
                silent,
            )
            metrics.record_worker_kill("hung")
            process.kill()  # SIGKILL: works on a stopped process too
            process.join(timeout=2)

    def _kill(self, worker_id: str | None) -> None:
        for slot in self.slots:
            if slot.worker_id == worker_id and slot.process is not None and slot.process.is_alive():
                log.warning("killing worker %s: its job is past the time limit", worker_id)
                metrics.record_worker_kill("job_timeout")
                slot.process.kill()

    def cleanup(self) -> None:
        for path in self.store.expire_results() + self.store.expire_uploads():
            self.files.delete(path)
        # Inputs of jobs that never ran to the end (e.g. cancelled while queued), and streaming
        # previews whose API process died before it could remove them.
        cutoff = time.time() - self.settings.result_ttl_s
        for kind in ("inputs", "previews"):
            root: Path = self.files.root / kind
            for folder in root.iterdir() if root.is_dir() else []:
                if folder.stat().st_mtime < cutoff:
                    self.files.delete_tree(f"{kind}/{folder.name}")
        # Half-written files of a process killed mid-write (SIGKILL by the watchdog, the OOM
        # killer): a write takes seconds, so one untouched for PART_FILE_MAX_AGE_S is abandoned.
        part_cutoff = time.time() - PART_FILE_MAX_AGE_S
        for kind in ("uploads", "inputs", "results", "previews"):
            for part in (self.files.root / kind).rglob("*.part"):
                with contextlib.suppress(OSError):  # gone meanwhile: renamed into place or swept
                    if part.stat().st_mtime < part_cutoff:
                        part.unlink()
