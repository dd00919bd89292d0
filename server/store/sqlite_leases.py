"""Lease recovery and expiry of ``SQLiteStore``: jobs whose worker died or gave them back, jobs
past their time limit, results past their TTL."""

from __future__ import annotations

import json
import time

from ..jobs import JobStatus


class LeaseTables:
    """Mixed into ``SQLiteStore``; relies on its ``_tx``, ``_db`` and ``_terminal`` (sqlite_queue)."""

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
