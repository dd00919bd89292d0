"""The job queue of ``RedisStore``: submit, claim (Streams consumer group), progress, terminal
writes, and the pub/sub waker of idle workers. The stream design is described in redis_store.py."""

from __future__ import annotations

import json
import time

import redis

from ..jobs import EditJob, JobMeta, JobRecord, JobStatus, Progress, ResultFile
from .base import QueueFull
from .redis_scripts import GROUP
from .sqlite_costs import budget_refusal, to_micro


def queue_name(meta: JobMeta) -> str:
    if meta.server_id:
        return f"pod:{meta.server_id}"
    return f"shared:{meta.model or 'any'}"


def _reads(worker: dict, queue: str) -> bool:
    """Whether a worker (its heartbeat entry) takes jobs from ``queue``."""
    if queue == f"pod:{worker.get('server_id')}":
        return True
    models = worker.get("models")
    if models is None:  # a worker that names no models reads every shared queue
        return queue.startswith("shared:")
    return queue in ("shared:any", *(f"shared:{m}" for m in models))


class RedisQueue:
    """Mixed into ``RedisStore``; relies on its ``r``, ``k``, ``_run``, ``_record``, ``_fill_eta``,
    ``live_workers`` and its settings (``retention_s``, ``server_id``, ``models``, ...)."""

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
        """Queue a job; with a ``budget_usd``, its estimated cost is reserved in the same script
        (INSUFFICIENT_BALANCE when it does not fit beside the key's costs and open reservations)."""
        fields = {
            "id": job_id,
            "kind": job.kind(),
            "owner": meta.owner,
            "job": job.model_dump_json(),
            "meta": meta.model_dump_json(),
            "warnings": json.dumps(meta.warnings),
            "callback_url": meta.callback_url or "",
            "contract": meta.contract,
            "work": json.dumps(meta.work),
        }
        flat = [x for pair in fields.items() for x in pair]
        budget = "" if budget_usd is None else to_micro(budget_usd)
        reserve = to_micro(reserve_usd)
        added, queued = self._run(
            "add", job_id, max_queued, queue_name(meta), self.retention_s, meta.owner, budget, reserve, *flat
        )
        if added == -2:
            raise budget_refusal(int(queued), reserve)
        if added != 1:
            raise QueueFull(int(queued))
        # Idle workers on every pod listen (open_waker); fire-and-forget, a dead pod blocks nothing.
        self.r.publish(self.k("wake"), job_id)
        return self.get_job(job_id)

    def open_waker(self) -> RedisWaker:
        return RedisWaker(self.r, self.k("wake"))

    def get_job(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(self.k("job", job_id))
        if not h or "job" not in h:
            return None
        rec = self._record(h)
        if rec.status.is_terminal():
            return rec
        self._fill_eta(rec, h)
        return rec

    def _consumers(self, queue: str) -> int:
        """Live workers that read ``queue`` (ETAs divide the work ahead among them)."""
        count = sum(1 for info in self.live_workers(max_age_s=10.0) if _reads(info, queue))
        return count or self.workers

    def _streams(self) -> list[str]:
        """The queues this worker reads, in order: its own pod's first, then the shared ones."""
        queues = [f"pod:{self.server_id}"] if self.server_id else []
        if self.models is None:
            shared = sorted(q for q in self.r.smembers(self.k("queues")) if q.startswith("shared:"))
            queues += shared or ["shared:any"]
        else:
            queues += ["shared:any", *(f"shared:{m}" for m in self.models)]
        return queues

    def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_ready:
            return
        try:
            self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(stream)

    def claim(self, worker_id: str, lease_s: float) -> JobRecord | None:
        lease_ms = max(int(lease_s * 1000), 1)
        for queue in self._streams():
            stream = self.k("stream", queue)
            self._ensure_group(stream)
            while True:
                # Entries whose holder stopped renewing for a whole lease first (they are the oldest).
                _, entries, *_ = self.r.xautoclaim(stream, GROUP, worker_id, lease_ms, "0-0", count=1)
                if not entries:
                    got = self.r.xreadgroup(GROUP, worker_id, {stream: ">"}, count=1)
                    entries = got[0][1] if got else []
                if not entries:
                    break
                entry_id, fields = entries[0]
                job_id = (fields or {}).get("job")
                if job_id is None:  # an entry deleted after delivery: nothing to run
                    self.r.xack(stream, GROUP, entry_id)
                    continue
                outcome = self._run(
                    "take",
                    job_id,
                    worker_id,
                    lease_s,
                    self.max_attempts,
                    self.server_id or "",
                    entry_id,
                    self.retention_s,
                )
                if outcome == "ok":
                    return self.get_job(job_id)
                if outcome == "busy":
                    break
                # "done": the job ended (or its record expired) while the entry waited; drop it here too,
                # as a script cannot find the stream of a record that is gone.
                self.r.xack(stream, GROUP, entry_id)
                self.r.xdel(stream, entry_id)
        return None

    def renew_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        return self._run("renew", job_id, worker_id, lease_s) == 1

    def set_progress(self, job_id: str, worker_id: str, progress: Progress) -> bool:
        """Record progress; returns True when the job should stop (cancelled, or no longer ours)."""
        return self._run("progress", job_id, worker_id, progress.model_dump_json()) == 1

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
        fields = [
            "results",
            json.dumps([r.model_dump() for r in results]),
            "seed",
            seed,
            "inference_seconds",
            repr(float(inference_seconds)),
            "warnings",
            json.dumps(warnings),
        ]
        if cost_usd is not None:
            fields += ["cost_micro", to_micro(cost_usd)]
        return self._run("complete", job_id, self.retention_s, self.result_ttl_s, *fields) == 1

    def fail(self, job_id: str, code: str, message: str, retryable: bool) -> bool:
        status = JobStatus.CANCELLED if code == "CANCELLED" else JobStatus.FAILED
        fields = ["failure_reason_code", code, "error", message, "retryable", int(retryable)]
        return self._run("terminal", job_id, status.value, self.retention_s, *fields) == 1

    def cancel(self, job_id: str) -> JobRecord | None:
        if self._run("cancel", job_id, self.retention_s) == "":
            return None
        return self.get_job(job_id)


class RedisWaker:
    """Pub/sub on the deployment's wake channel: a job queued through any API pod wakes idle
    workers at once instead of at their next poll. Missed messages only cost one poll interval."""

    def __init__(self, r: redis.Redis, channel: str):
        self.channel = channel
        self.pubsub = r.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)

    def wait(self, timeout: float) -> bool:
        try:
            woken = self.pubsub.get_message(timeout=timeout) is not None
            while woken and self.pubsub.get_message(timeout=0) is not None:
                pass  # several jobs queued at once: one claim round serves them all
            return woken
        except redis.RedisError:
            time.sleep(timeout)  # Redis away: the claim loop's own retries report it
            return False
