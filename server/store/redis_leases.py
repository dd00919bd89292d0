"""Lease recovery and expiry of ``RedisStore``: jobs whose worker died or gave them back, jobs
past their time limit, results past their TTL (the writes are Lua scripts, redis_scripts_leases)."""

from __future__ import annotations

import json


class RedisLeases:
    """Mixed into ``RedisStore``; relies on its ``r``, ``k``, ``_run``, ``redis_now``,
    ``worker_heartbeat`` and ``retention_s``."""

    def requeue_expired(self, max_attempts: int) -> list[str]:
        return list(self._run("requeue_expired", max_attempts, self.retention_s))

    def release_worker(self, worker_id: str) -> None:
        """A worker died: its leases end now and its stream entries can be taken over at once."""
        self._run("release_worker", worker_id)
        self.worker_heartbeat(worker_id, 0, "dead")

    def hand_back(self, job_id: str, worker_id: str) -> bool:
        """The worker gives up a job it still holds (its result could not be stored): queued again."""
        return self._run("hand_back", job_id, worker_id) == 1

    def overdue(self, timeout_s: float) -> list[tuple[str, str]]:
        cutoff = self.redis_now() - timeout_s
        out = []
        for job_id in self.r.zrange(self.k("leases"), 0, -1):
            claimed_at, owner, status = self.r.hmget(
                self.k("job", job_id), "claimed_at", "lease_owner", "status"
            )
            if status == "processing" and claimed_at and float(claimed_at) < cutoff:
                out.append((job_id, owner))
        return out

    def expire_results(self) -> list[str]:
        """Forget results past their TTL; returns the files to delete (relative paths)."""
        return [r["path"] for raw in self._run("expire_results") for r in json.loads(raw)]
