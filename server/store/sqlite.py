"""SQLite (WAL) store shared by the API process and the worker processes.

Every state change is one short ``BEGIN IMMEDIATE`` transaction, so claims are atomic across
processes. The first terminal write wins: a job that was re-run after its lease expired can
neither replace the visible result nor enqueue a second webhook (the outbox row is written in
the same transaction as the terminal state).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..jobs import EditJob, JobMeta, JobRecord, JobStatus, Progress, ResultFile
from .sqlite_costs import CostTables, to_micro
from .sqlite_limits import LIMITS_SCHEMA, LimitTables
from .sqlite_tables import SideTables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, owner TEXT NOT NULL,
  job TEXT NOT NULL, meta TEXT NOT NULL, created_at REAL NOT NULL,
  started_at REAL, claimed_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
  lease_owner TEXT, lease_expires REAL, cancel_requested INTEGER NOT NULL DEFAULT 0,
  progress TEXT, results TEXT NOT NULL DEFAULT '[]', seed INTEGER, inference_seconds REAL,
  warnings TEXT NOT NULL DEFAULT '[]', failure_reason_code TEXT, error TEXT, retryable INTEGER,
  results_expire_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_kind ON jobs (kind, status, finished_at);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at);
CREATE TABLE IF NOT EXISTS uploads (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, content_type TEXT NOT NULL,
  size_bytes INTEGER NOT NULL, path TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, data TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
  id TEXT PRIMARY KEY, job_id TEXT NOT NULL, event TEXT NOT NULL, url TEXT NOT NULL,
  contract TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,
  next_attempt_at REAL NOT NULL, last_error TEXT, delivered_at REAL
);
CREATE TABLE IF NOT EXISTS workers (
  id TEXT PRIMARY KEY, pid INTEGER NOT NULL, state TEXT NOT NULL, heartbeat_at REAL NOT NULL
);
"""

_TERMINAL = tuple(s.value for s in JobStatus if s.is_terminal())


class SQLiteStore(SideTables, LimitTables, CostTables):
    def __init__(
        self, path: Path, *, result_ttl_s: float = 86400, default_job_seconds: float = 30, workers: int = 1
    ):
        self.path = Path(path)
        self.result_ttl_s = result_ttl_s
        self.default_job_seconds = default_job_seconds
        self.workers = max(workers, 1)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db().executescript(_SCHEMA + LIMITS_SCHEMA)  # executescript manages its own transaction
        self._migrate_costs()

    # -- plumbing ----------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _record(self, row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            id=row["id"],
            kind=row["kind"],
            status=JobStatus(row["status"]),
            job=EditJob.model_validate_json(row["job"]),
            meta=JobMeta.model_validate_json(row["meta"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]),
            progress=Progress.model_validate_json(row["progress"]) if row["progress"] else None,
            results=[ResultFile.model_validate(r) for r in json.loads(row["results"])],
            seed=row["seed"],
            inference_seconds=row["inference_seconds"],
            cost_usd=None if row["cost_micro"] is None else row["cost_micro"] / 1e6,
            warnings=json.loads(row["warnings"]),
            failure_reason_code=row["failure_reason_code"],
            error=row["error"],
            retryable=None if row["retryable"] is None else bool(row["retryable"]),
        )

    # -- queue -------------------------------------------------------------------------------
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
        from ..errors import ServiceError

        with self._tx() as db:
            (queued,) = db.execute("SELECT count(*) FROM jobs WHERE status='queued'").fetchone()
            if queued >= max_queued:
                raise ServiceError(
                    "QUEUE_FULL", f"the queue is full ({queued} jobs waiting)", retry_after_s=30
                )
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

    def requeue_expired(self, max_attempts: int) -> list[str]:
        """Jobs whose worker stopped renewing go back to the queue (or end, if they keep dying)."""
        now = time.time()
        touched = []
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, attempts, cancel_requested FROM jobs"
                " WHERE status='processing' AND lease_expires < ?",
                (now,),
            ).fetchall()
            for row in rows:
                touched.append(row["id"])
                if row["cancel_requested"]:
                    self._terminal(
                        db,
                        row["id"],
                        JobStatus.CANCELLED,
                        failure_reason_code="CANCELLED",
                        error="cancelled",
                        retryable=0,
                    )
                elif row["attempts"] >= max_attempts:
                    self._terminal(
                        db,
                        row["id"],
                        JobStatus.FAILED,
                        failure_reason_code="WORKER_LOST",
                        error=f"the worker stopped {row['attempts']} times while running this job",
                        retryable=1,
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET status='queued', lease_owner=NULL, lease_expires=NULL, progress=NULL"
                        " WHERE id=?",
                        (row["id"],),
                    )
        return touched

    def release_worker(self, worker_id: str) -> None:
        """A worker died: let its leases run out now instead of after the lease time."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET lease_expires=0 WHERE lease_owner=? AND status='processing'", (worker_id,)
            )
            db.execute("UPDATE workers SET state='dead' WHERE id=?", (worker_id,))

    def hand_back(self, job_id: str, worker_id: str) -> bool:
        """The worker gives up a job it still holds (its result could not be stored): it is queued
        again at once, in its old place."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status='queued', lease_owner=NULL, lease_expires=NULL, progress=NULL"
                " WHERE id=? AND lease_owner=? AND status='processing'",
                (job_id, worker_id),
            )
        return cur.rowcount == 1

    def overdue(self, timeout_s: float) -> list[tuple[str, str]]:
        rows = (
            self._db()
            .execute(
                "SELECT id, lease_owner FROM jobs WHERE status='processing' AND claimed_at < ?",
                (time.time() - timeout_s,),
            )
            .fetchall()
        )
        return [(r["id"], r["lease_owner"]) for r in rows]

    def expire_results(self) -> list[str]:
        """Forget results past their TTL; returns the files to delete (relative paths)."""
        paths: list[str] = []
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, results FROM jobs WHERE results_expire_at < ? AND results != '[]'", (time.time(),)
            ).fetchall()
            for row in rows:
                paths += [r["path"] for r in json.loads(row["results"])]
                db.execute("UPDATE jobs SET results='[]' WHERE id=?", (row["id"],))
        return paths
