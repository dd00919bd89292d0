"""What jobs cost in ``RedisStore``, in money and in time (the writes are in the Lua scripts).

Money is whole micro-dollars, kept per owner in two hashes: ``spent_micro`` (what completed jobs
were charged, at the price in force when each ended) and ``reserved_micro`` (what unfinished jobs
hold: ADD reserves atomically with queueing, the terminal write releases). The calibration samples
of ETAs are one list for the deployment (``calibration``): a shared queue's job may run on any pod.
"""

from __future__ import annotations

import json

from ..eta import CALIBRATION_SAMPLES, MAX_AHEAD_PRICED, CostModelCache, Sample, queued_eta, running_eta
from ..jobs import JobRecord, JobStatus
from .sqlite_costs import MICRO


class RedisCostTables:
    """Mixed into ``RedisStore``; relies on its ``r``, ``k``, ``redis_now``, ``_consumers``,
    ``live_workers``, ``workers`` and ``default_job_seconds``."""

    _cost_models: CostModelCache | None = None

    # -- money -------------------------------------------------------------------------------
    def committed_usd(self, owner: str) -> float:
        """What a key has been charged plus what its unfinished jobs hold reserved."""
        spent = self.r.hget(self.k("spent_micro"), owner)
        reserved = self.r.hget(self.k("reserved_micro"), owner)
        return (int(spent or 0) + int(reserved or 0)) / MICRO

    # -- time --------------------------------------------------------------------------------
    def calibration_samples(self, limit: int = CALIBRATION_SAMPLES) -> list[Sample]:
        samples = []
        for raw in self.r.lrange(self.k("calibration"), 0, limit - 1):
            item = json.loads(raw)
            samples.append((item.get("work") or {}, float(item["seconds"])))
        return samples

    def cost_model(self):
        if self._cost_models is None:
            self._cost_models = CostModelCache()
        return self._cost_models.model(self.calibration_samples(), self.default_job_seconds)

    def _works(self, job_ids: list[str]) -> list[dict[str, float]]:
        pipe = self.r.pipeline()
        for job_id in job_ids:
            pipe.hget(self.k("job", job_id), "work")
        return [json.loads(raw) if raw else {} for raw in pipe.execute()]

    def _running_in(self, queue: str | None) -> list[tuple[dict[str, float], float]]:
        ids = self.processing_jobs(queue) if queue else self.r.zrange(self.k("leases"), 0, -1)
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hmget(self.k("job", job_id), "work", "claimed_at")
        now = self.redis_now()
        out = []
        for work, claimed in pipe.execute():
            out.append((json.loads(work) if work else {}, now - float(claimed) if claimed else 0.0))
        return out

    def _fill_eta(self, rec: JobRecord, h: dict[str, str]) -> None:
        """Queue position and ETA of an unfinished job: everything ahead of it, then its own work."""
        model, queue = self.cost_model(), h["queue"]
        if rec.status == JobStatus.QUEUED:
            ahead = self.r.zrank(self.k("queued", queue), rec.id) or 0
            listed = self.r.zrange(self.k("queued", queue), 0, min(ahead, MAX_AHEAD_PRICED) - 1)
            listed = listed if ahead else []
            rec.queue_position = ahead + 1
            rec.estimated_seconds = queued_eta(
                model, rec.meta.work, self._works(listed), ahead - len(listed), self._running_in(queue),
                self._consumers(queue),
            )  # fmt: skip
        else:
            claimed = h.get("claimed_at")
            elapsed = self.redis_now() - float(claimed) if claimed else 0.0
            rec.estimated_seconds = running_eta(model, rec.meta.work, elapsed)

    def estimate_new(self, work: dict[str, float] | None) -> float:
        """ETA of a job with these units of work queued now: everything queued and running, shared
        by every live worker."""
        listed = self.r.zrange(self.k("queued"), 0, MAX_AHEAD_PRICED - 1)
        more = max(self.queued_count() - len(listed), 0)
        consumers = len(self.live_workers(max_age_s=10.0)) or self.workers
        return queued_eta(
            self.cost_model(), work or {}, self._works(listed), more, self._running_in(None), consumers
        )
