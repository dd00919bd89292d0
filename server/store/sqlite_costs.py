"""What jobs cost in ``SQLiteStore``, in money and in time.

Money is kept in whole micro-dollars (integers), so sums are exact: a job reserves its estimated
cost in the transaction that queues it (``reserved_micro``), the terminal write releases it, and a
completed job's ``cost_micro`` is what it was charged at the price in force when it ended. A key's
committed money is the sum of its jobs' costs plus their open reservations.
"""

from __future__ import annotations

import json
import time

from ..errors import ServiceError
from ..eta import CALIBRATION_SAMPLES, MAX_AHEAD_PRICED, CostModelCache, Sample, queued_eta, running_eta
from ..jobs import JobRecord, JobStatus

MICRO = 1_000_000

_COLUMNS = {"cost_micro": "INTEGER", "reserved_micro": "INTEGER"}


def to_micro(usd: float | None) -> int:
    return round((usd or 0.0) * MICRO)


def budget_refusal(left_micro: int, reserve_micro: int) -> ServiceError:
    if left_micro <= 0:
        return ServiceError("INSUFFICIENT_BALANCE", "the budget of this API key is spent")
    return ServiceError(
        "INSUFFICIENT_BALANCE",
        f"this job's estimated cost ({reserve_micro / MICRO:.6f} USD) is more than what is left of"
        f" this API key's budget ({left_micro / MICRO:.6f} USD, after its unfinished jobs)",
    )


class CostTables:
    """Mixed into ``SQLiteStore``; relies on its ``_tx``, ``_db``, ``workers`` and ``default_job_seconds``."""

    _cost_models: CostModelCache

    def _migrate_costs(self) -> None:
        """Databases made before money was kept per job get its columns (and the finish index)."""
        self._cost_models = CostModelCache()
        db = self._db()
        have = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _COLUMNS.items():
            if name not in have:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (status, finished_at)")

    # -- money -------------------------------------------------------------------------------
    def _reserve(self, db, owner: str, budget_usd: float | None, reserve_usd: float) -> int | None:
        """Inside the queueing transaction: the micro-dollars reserved, or refuse the job."""
        if budget_usd is None:
            return None
        reserve = to_micro(reserve_usd)
        left = to_micro(budget_usd) - self._committed_micro(db, owner)
        if left <= 0 or reserve > left:
            raise budget_refusal(left, reserve)
        return reserve

    @staticmethod
    def _committed_micro(db, owner: str) -> int:
        (micro,) = db.execute(
            "SELECT coalesce(sum(coalesce(cost_micro, 0) + coalesce(reserved_micro, 0)), 0)"
            " FROM jobs WHERE owner=?",
            (owner,),
        ).fetchone()
        return int(micro)

    def committed_usd(self, owner: str) -> float:
        """What a key has been charged plus what its unfinished jobs hold reserved."""
        return self._committed_micro(self._db(), owner) / MICRO

    # -- time --------------------------------------------------------------------------------
    def calibration_samples(self, limit: int = CALIBRATION_SAMPLES) -> list[Sample]:
        """(units of work, inference seconds) of the last jobs completed on this machine."""
        rows = (
            self._db()
            .execute(
                "SELECT meta, inference_seconds FROM jobs WHERE status='completed'"
                " AND inference_seconds IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [(json.loads(r["meta"]).get("work") or {}, float(r["inference_seconds"])) for r in rows]

    def cost_model(self):
        return self._cost_models.model(self.calibration_samples(), self.default_job_seconds)

    def _fill_eta(self, rec: JobRecord, claimed_at: float | None) -> None:
        """Queue position and ETA of an unfinished job: everything ahead of it, then its own work."""
        db, model = self._db(), self.cost_model()
        if rec.status == JobStatus.QUEUED:
            (ahead,) = db.execute(
                "SELECT count(*) FROM jobs WHERE status='queued' AND created_at < ?", (rec.created_at,)
            ).fetchone()
            listed = db.execute(
                "SELECT meta FROM jobs WHERE status='queued' AND created_at < ? ORDER BY created_at LIMIT ?",
                (rec.created_at, MAX_AHEAD_PRICED),
            ).fetchall()
            rec.queue_position = ahead + 1
            rec.estimated_seconds = queued_eta(
                model, rec.meta.work, [_work(r["meta"]) for r in listed], ahead - len(listed),
                self._running(), self.workers,
            )  # fmt: skip
        else:
            now = time.time()
            rec.estimated_seconds = running_eta(model, rec.meta.work, now - (claimed_at or now))

    def _running(self) -> list[tuple[dict[str, float], float]]:
        now = time.time()
        rows = self._db().execute("SELECT meta, claimed_at FROM jobs WHERE status='processing'").fetchall()
        return [(_work(r["meta"]), now - (r["claimed_at"] or now)) for r in rows]

    def estimate_new(self, work: dict[str, float] | None) -> float:
        """ETA of a job with these units of work queued now, behind everything queued and running."""
        db, model = self._db(), self.cost_model()
        (queued,) = db.execute("SELECT count(*) FROM jobs WHERE status='queued'").fetchone()
        listed = db.execute(
            "SELECT meta FROM jobs WHERE status='queued' ORDER BY created_at LIMIT ?", (MAX_AHEAD_PRICED,)
        ).fetchall()
        ahead = [_work(r["meta"]) for r in listed]
        return queued_eta(model, work or {}, ahead, queued - len(ahead), self._running(), self.workers)


def _work(meta_json: str) -> dict[str, float]:
    return json.loads(meta_json).get("work") or {}
