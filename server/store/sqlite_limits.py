"""Admission state of ``SQLiteStore``: per-key rate windows and Idempotency-Key records."""

from __future__ import annotations

import math
import time

# Validation, fetching and queueing take seconds; a claim still without a job after this is dead.
ABANDONED_AFTER_S = 300.0

LIMITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_hits (bucket TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_hits_bucket ON rate_hits (bucket, at);
CREATE INDEX IF NOT EXISTS rate_hits_at ON rate_hits (at);
CREATE TABLE IF NOT EXISTS idempotency (
  owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, job_id TEXT,
  created_at REAL NOT NULL, PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_at);
"""


class LimitTables:
    """Mixed into ``SQLiteStore``; relies on its ``_tx`` and ``_db``."""

    def queued_count(self) -> int:
        (n,) = self._db().execute("SELECT count(*) FROM jobs WHERE status='queued'").fetchone()
        return n

    def active_count(self, owner: str) -> int:
        (n,) = (
            self._db()
            .execute(
                "SELECT count(*) FROM jobs WHERE owner=? AND status IN ('queued', 'processing')", (owner,)
            )
            .fetchone()
        )
        return n

    def rate_hit(self, bucket: str, limit: int, window_s: float) -> int:
        """Count one hit in a sliding window; 0 when allowed, else whole seconds until it would be."""
        now = time.time()
        with self._tx() as db:
            # Every bucket's expired hits go, so keys that stopped sending leave nothing behind.
            db.execute("DELETE FROM rate_hits WHERE at <= ?", (now - window_s,))
            rows = db.execute(
                "SELECT at FROM rate_hits WHERE bucket=? ORDER BY at LIMIT ?", (bucket, limit)
            ).fetchall()
            if len(rows) >= limit:
                return max(1, math.ceil(rows[0]["at"] + window_s - now))
            db.execute("INSERT INTO rate_hits (bucket, at) VALUES (?, ?)", (bucket, now))
        return 0

    def idempotency_begin(
        self, owner: str, key: str, fingerprint: str, ttl_s: float
    ) -> tuple[str, str | None]:
        """Claim ``key`` for a request: ("new", None), ("done", job_id), ("pending", None) or
        ("mismatch", None) when the key was used with another body. Records older than ``ttl_s`` lapse."""
        now = time.time()
        with self._tx() as db:
            # Lapsed records of every owner go here, so the table holds at most a TTL's worth.
            db.execute("DELETE FROM idempotency WHERE created_at < ?", (now - ttl_s,))
            row = db.execute(
                "SELECT fingerprint, job_id, created_at FROM idempotency WHERE owner=? AND key=?",
                (owner, key),
            ).fetchone()
            # A claim with no job long after it was made belongs to a request that died mid-way.
            abandoned = (
                row is not None and row["job_id"] is None and row["created_at"] < now - ABANDONED_AFTER_S
            )
            if row is None or abandoned:
                db.execute(
                    "INSERT OR REPLACE INTO idempotency (owner, key, fingerprint, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (owner, key, fingerprint, now),
                )
                return "new", None
        if row["fingerprint"] != fingerprint:
            return "mismatch", None
        return ("done", row["job_id"]) if row["job_id"] else ("pending", None)

    def idempotency_finish(self, owner: str, key: str, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE idempotency SET job_id=? WHERE owner=? AND key=?", (job_id, owner, key))

    def idempotency_abort(self, owner: str, key: str) -> None:
        """The request failed before a job existed: the key may be used again."""
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE owner=? AND key=? AND job_id IS NULL", (owner, key))
