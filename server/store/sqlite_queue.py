"""The job queue of ``SQLiteStore``: submit, list, claim, progress and the first terminal write."""

from __future__ import annotations

import json
import time

from ..jobs import EditJob, JobMeta, JobRecord, JobStatus, Progress, ResultFile
from .base import QueueFull
from .sqlite_costs import to_micro

_TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal())


class QueueTables:
    """Mixed into ``SQLiteStore``; relies on its ``_tx``, ``_db``, ``_record``, ``_reserve``,
    ``_fill_eta`` and ``result_ttl_s``."""

    def add_job(
        self,
        job_id: str,
        job: EditJob,
        meta: JobMeta,
        *,
        max_queued: int,
        budget_usd: float | None = None,
        reserve_usd: float = 0.0,
    ) -> JobRecord:
        """Queue a job; with a ``budget_usd``, its estimated cost is reserved in the same transaction
        (INSUFFICIENT_BALANCE when it does not fit beside the key's costs and open reservations)."""
        with self._tx() as db:
            (queued,) = db.execute("SELECT count(*) FROM jobs WHERE status='queued'").fetchone()
            if queued >= max_queued:
                raise QueueFull(queued)
            reserved = self._reserve(db, meta.owner, budget_usd, reserve_usd)
            db.execute(
                "INSERT INTO jobs (id, kind, status, owner, job, meta, created_at, warnings, reserved_micro)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    job.kind(),
                    meta.owner,
                    job.model_dump_json(),
                    meta.model_dump_json(),
                    time.time(),
                    json.dumps(meta.warnings),
                    reserved,
                ),
            )
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord | None:
        db = self._db()
        row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            return None
        rec = self._record(row)
        if rec.status.is_terminal():
            return rec
        self._fill_eta(rec, row["claimed_at"])
        return rec

    def list_jobs(self, owner: str, *, contract: str | None = None, limit: int = 50) -> list[JobRecord]:
        """An owner's most recent jobs, newest first (optionally only those one contract created)."""
        sql = "SELECT * FROM jobs WHERE owner=?"
        args: list = [owner]
        if contract is not None:
            sql += " AND json_extract(meta, '$.contract')=?"
            args.append(contract)
        rows = self._db().execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._record(row) for row in rows]

    def open_waker(self) -> None:
        return None  # one machine: the supervisor's pipe wakes its workers

    def claim(self, worker_id: str, lease_s: float) -> JobRecord | None:
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status='queued' ORDER BY created_at LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status='processing', lease_owner=?, lease_expires=?, claimed_at=?,"
                " started_at=coalesce(started_at, ?), attempts=attempts+1, progress=NULL WHERE id=?",
                (worker_id, now + lease_s, now, now, row["id"]),
            )
        return self.get_job(row["id"])

    def renew_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_expires=? WHERE id=? AND lease_owner=? AND status='processing'",
                (time.time() + lease_s, job_id, worker_id),
            )
        return cur.rowcount == 1

    def set_progress(self, job_id: str, worker_id: str, progress: Progress) -> bool:
        """Record progress; returns True when the job should stop (cancelled, or no longer ours)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET progress=? WHERE id=? AND lease_owner=? AND status='processing'",
                (progress.model_dump_json(), job_id, worker_id),
            )
            row = db.execute(
                "SELECT status, cancel_requested, lease_owner FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
        return (
            row is None
            or bool(row["cancel_requested"])
            or row["status"] != "processing"
            or (row["lease_owner"] != worker_id)
        )

    def _terminal(self, db, job_id: str, status: JobStatus, **fields) -> bool:
        """Write a terminal state unless one is already written; enqueue its webhook alongside."""
        now = time.time()
        sets = ", ".join(f"{k}=?" for k in fields)
        cur = db.execute(
            # the reservation goes with the terminal write: a job ends (and is settled) only once
            "UPDATE jobs SET status=?, finished_at=?, lease_owner=NULL, lease_expires=NULL,"
            f" reserved_micro=NULL{', ' + sets if sets else ''}"
            f" WHERE id=? AND status NOT IN ({','.join('?' * len(_TERMINAL))})",
            (status.value, now, *fields.values(), job_id, *_TERMINAL),
        )
        if cur.rowcount != 1:
            return False
        meta = JobMeta.model_validate_json(
            db.execute("SELECT meta FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        )
        if meta.callback_url:
            event = f"job.{status.value}"
            db.execute(
                "INSERT OR IGNORE INTO webhook_deliveries"
                " (id, job_id, event, url, contract, state, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (f"msg_{job_id}_{status.value}", job_id, event, meta.callback_url, meta.contract, now),
            )
        return True

    def complete(
        self,
        job_id: str,
        results: list[ResultFile],
        seed: int,
        inference_seconds: float,
        warnings: list[str],
        cost_usd: float | None = None,
    ) -> bool:
        """The first terminal write wins: only it charges ``cost_usd`` and releases the reservation."""
        with self._tx() as db:
            return self._terminal(
                db,
                job_id,
                JobStatus.COMPLETED,
                results=json.dumps([r.model_dump() for r in results]),
                seed=seed,
                inference_seconds=inference_seconds,
                warnings=json.dumps(warnings),
                results_expire_at=time.time() + self.result_ttl_s,
                cost_micro=None if cost_usd is None else to_micro(cost_usd),
            )

    def fail(self, job_id: str, code: str, message: str, retryable: bool) -> bool:
        status = JobStatus.CANCELLED if code == "CANCELLED" else JobStatus.FAILED
        with self._tx() as db:
            return self._terminal(
                db, job_id, status, failure_reason_code=code, error=message, retryable=int(retryable)
            )

    def cancel(self, job_id: str) -> JobRecord | None:
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == "queued":
                self._terminal(
                    db,
                    job_id,
                    JobStatus.CANCELLED,
                    failure_reason_code="CANCELLED",
                    error="cancelled before it started",
                    retryable=0,
                )
            elif row["status"] == "processing":
                db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
        return self.get_job(job_id)
