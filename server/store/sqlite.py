"""SQLite (WAL) store shared by the API process and the worker processes of one server.

Every state change is one short ``BEGIN IMMEDIATE`` transaction, so claims are atomic across
processes. The first terminal write wins: a job that was re-run after its lease expired can
neither replace the visible result nor enqueue a second webhook (the outbox row is written in
the same transaction as the terminal state).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from ..jobs import EditJob, JobMeta, JobRecord, JobStatus, Progress, ResultFile
from .sqlite_costs import CostTables
from .sqlite_leases import LeaseTables
from .sqlite_limits import LIMITS_SCHEMA, LimitTables
from .sqlite_queue import QueueTables
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


class SQLiteStore(QueueTables, LeaseTables, SideTables, LimitTables, CostTables):
    """The queue (sqlite_queue), lease recovery (sqlite_leases), side tables, admission state and
    costs over one database file; the mixins share this class's ``_tx``/``_db``/``_record``."""

    shared = False  # one server: pods.py answers for this server alone, with no registry

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
