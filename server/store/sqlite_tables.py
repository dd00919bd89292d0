"""Worker heartbeats, uploads, profiles and the webhook outbox of ``SQLiteStore``."""

from __future__ import annotations

import json
import time

from .base import Profile, Upload, WebhookDelivery


class SideTables:
    """Mixed into ``SQLiteStore``; relies on its ``_tx`` and ``_db``."""

    # -- workers -----------------------------------------------------------------------------
    def worker_heartbeat(self, worker_id: str, pid: int, state: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO workers (id, pid, state, heartbeat_at) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO"
                " UPDATE SET pid=excluded.pid, state=excluded.state, heartbeat_at=excluded.heartbeat_at",
                (worker_id, pid, state, time.time()),
            )

    def ready_workers(self, max_age_s: float) -> list[str]:
        rows = (
            self._db()
            .execute(
                "SELECT id FROM workers WHERE state='ready' AND heartbeat_at > ?", (time.time() - max_age_s,)
            )
            .fetchall()
        )
        return [r["id"] for r in rows]

    # -- metrics -----------------------------------------------------------------------------
    def metrics_snapshot(self) -> dict:
        """Counts for ``GET /metrics``: queue depth, jobs by state and contract, workers, outbox."""
        db = self._db()
        (queued,) = db.execute("SELECT count(*) FROM jobs WHERE status='queued'").fetchone()
        jobs = db.execute(
            "SELECT status, json_extract(meta, '$.contract') AS contract, count(*) AS n FROM jobs"
            " GROUP BY status, contract"
        ).fetchall()
        workers = db.execute("SELECT id, state, heartbeat_at FROM workers ORDER BY id").fetchall()
        outbox = db.execute("SELECT state, count(*) AS n FROM webhook_deliveries GROUP BY state").fetchall()
        return {
            "queues": {"local": queued},  # one machine, one queue
            "jobs": {(r["status"], r["contract"] or "unknown"): r["n"] for r in jobs},
            "workers": [dict(r) for r in workers],
            "webhooks": {r["state"]: r["n"] for r in outbox},
        }

    # -- uploads and profiles ----------------------------------------------------------------
    def add_upload(self, upload: Upload) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tuple(vars(upload).values()))

    def get_upload(self, upload_id: str) -> Upload | None:
        row = self._db().execute("SELECT * FROM uploads WHERE id=?", (upload_id,)).fetchone()
        return Upload(**dict(row)) if row else None

    def expire_uploads(self) -> list[str]:
        with self._tx() as db:
            rows = db.execute("SELECT id, path FROM uploads WHERE expires_at < ?", (time.time(),)).fetchall()
            db.executemany("DELETE FROM uploads WHERE id=?", [(r["id"],) for r in rows])
        return [r["path"] for r in rows]

    def add_profile(self, profile: Profile) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO profiles VALUES (?, ?, ?, ?)",
                (profile.id, profile.owner, json.dumps(profile.data), profile.created_at),
            )

    def get_profile(self, profile_id: str) -> Profile | None:
        row = self._db().execute("SELECT * FROM profiles WHERE id=?", (profile_id,)).fetchone()
        return Profile(row["id"], row["owner"], json.loads(row["data"]), row["created_at"]) if row else None

    def list_profiles(self, owner: str) -> list[Profile]:
        rows = (
            self._db()
            .execute("SELECT * FROM profiles WHERE owner=? ORDER BY created_at", (owner,))
            .fetchall()
        )
        return [Profile(r["id"], r["owner"], json.loads(r["data"]), r["created_at"]) for r in rows]

    def delete_profile(self, profile_id: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM profiles WHERE id=?", (profile_id,)).rowcount == 1

    # -- webhook outbox ----------------------------------------------------------------------
    def _delivery(self, row) -> WebhookDelivery:
        return WebhookDelivery(**{k: row[k] for k in WebhookDelivery.__dataclass_fields__})

    def due_deliveries(self, limit: int) -> list[WebhookDelivery]:
        rows = (
            self._db()
            .execute(
                "SELECT * FROM webhook_deliveries WHERE state='pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (time.time(), limit),
            )
            .fetchall()
        )
        return [self._delivery(r) for r in rows]

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        row = self._db().execute("SELECT * FROM webhook_deliveries WHERE id=?", (delivery_id,)).fetchone()
        return self._delivery(row) if row else None

    def delivery_done(self, delivery_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE webhook_deliveries SET state='delivered', attempts=attempts+1, delivered_at=?"
                " WHERE id=?",
                (time.time(), delivery_id),
            )

    def delivery_failed(self, delivery_id: str, error: str, next_attempt_at: float | None) -> None:
        """Record a failed attempt; ``next_attempt_at`` None means give up."""
        with self._tx() as db:
            db.execute(
                "UPDATE webhook_deliveries SET attempts=attempts+1, last_error=?, state=?,"
                " next_attempt_at=coalesce(?, next_attempt_at) WHERE id=?",
                (error[:500], "pending" if next_attempt_at else "failed", next_attempt_at, delivery_id),
            )
