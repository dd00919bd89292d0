"""Admission state (rate windows, Idempotency-Key, per-key unfinished jobs), job listings and metric
gauges of ``RedisStore``; the write side of each lives in the Lua scripts, so these are reads."""

from __future__ import annotations

import json

from ..jobs import JobRecord


class RedisLimitTables:
    """Mixed into ``RedisStore``; relies on its ``r``, ``k``, ``_run`` and ``get_job``."""

    # -- admission (server/limits.py) --------------------------------------------------------
    def queued_count(self) -> int:
        return self.r.zcard(self.k("queued"))

    def active_count(self, owner: str) -> int:
        return self.r.scard(self.k("active", owner))

    def rate_hit(self, bucket: str, limit: int, window_s: float) -> int:
        """Count one hit in a sliding window; 0 when allowed, else whole seconds until it would be."""
        return int(self._run("rate_hit", bucket, limit, window_s))

    def idempotency_begin(
        self, owner: str, key: str, fingerprint: str, ttl_s: float
    ) -> tuple[str, str | None]:
        """Claim ``key`` for a request: ("new", None), ("done", job_id), ("pending", None) or
        ("mismatch", None) when the key was used with another body. The record lapses after ``ttl_s``."""
        state, job_id = self._run("idempotency_begin", owner, key, fingerprint, ttl_s)
        return state, job_id or None

    def idempotency_finish(self, owner: str, key: str, job_id: str) -> None:
        self.r.hset(self.k("idem", owner, key), "job_id", job_id)

    def idempotency_abort(self, owner: str, key: str) -> None:
        self._run("idempotency_abort", owner, key)

    # -- listings and gauges -----------------------------------------------------------------
    def list_jobs(self, owner: str, *, contract: str | None = None, limit: int = 50) -> list[JobRecord]:
        """An owner's most recent jobs, newest first (optionally only those one contract created)."""
        index = self.k("jobs", owner)
        out: list[JobRecord] = []
        start, page = 0, max(limit, 50)
        while len(out) < limit:
            ids = self.r.zrevrange(index, start, start + page - 1)
            if not ids:
                break
            for job_id in ids:
                record = self.get_job(job_id)
                if record is None:  # past its retention: drop it from the index too
                    self.r.zrem(index, job_id)
                elif contract is None or record.meta.contract == contract:
                    out.append(record)
                    if len(out) == limit:
                        break
            start += page
        return out

    def metrics_snapshot(self) -> dict:
        """Counts for ``GET /metrics``: queue depth per queue, jobs by state and contract, workers,
        the webhook outbox; every pod reports the same numbers (they are the shared store's)."""
        queues = sorted(self.queues())
        depths = {}
        if queues:
            pipe = self.r.pipeline()
            for queue in queues:
                pipe.zcard(self.k("queued", queue))
            depths = dict(zip(queues, pipe.execute(), strict=True))
        jobs = {}
        for field, n in self.r.hgetall(self.k("jobcounts")).items():
            state, _, contract = field.partition("|")
            if int(n) > 0:
                jobs[(state, contract or "unknown")] = int(n)
        workers = []
        for worker_id, raw in sorted(self.r.hgetall(self.k("workers")).items()):
            info = json.loads(raw)
            workers.append({"id": worker_id, "state": info["state"], "heartbeat_at": info["heartbeat_at"]})
        webhooks = {s: int(n) for s, n in self.r.hgetall(self.k("deliverycounts")).items() if int(n) > 0}
        return {"queues": depths, "jobs": jobs, "workers": workers, "webhooks": webhooks}
