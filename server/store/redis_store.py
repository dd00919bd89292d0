"""Redis store for several pods: the same ``JobStore`` contract as ``SQLiteStore``, on a shared Redis.

The queue is a Redis Stream per routing target, read through one consumer group ("workers"):
``shared:<model>`` for unpinned jobs (any worker that holds the model reads it) and ``pod:<server_id>``
for jobs pinned to one pod (only that pod's workers read it). This is the documented at-least-once
pattern of Streams: an entry handed out by XREADGROUP stays in the group's pending-entries list until
the job's terminal write XACKs it; the worker holding it renews its lease by re-claiming it to itself
(XCLAIM ... JUSTID resets the idle time); an entry idle longer than the lease belongs to a worker that
died, and the next worker takes it over with XAUTOCLAIM. The job hash carries the authoritative state;
each transition is one Lua script (redis_scripts.py), so the first terminal write still wins and writes
the webhook outbox row in the same step, exactly as in SQLite.
"""

from __future__ import annotations

import json
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..jobs import EditJob, JobMeta, JobRecord, JobStatus, Progress, ResultFile
from .redis_costs import RedisCostTables
from .redis_limits import RedisLimitTables
from .redis_scripts import GROUP, PRELUDE, SCRIPTS
from .redis_side import RedisSideTables
from .sqlite_costs import budget_refusal, to_micro

# Finished job records stay readable this long (at least twice the result TTL).
MIN_RETENTION_S = 7 * 24 * 3600


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


def _opt_float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


class RedisStore(RedisSideTables, RedisLimitTables, RedisCostTables):
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "retouch",
        result_ttl_s: float = 86400,
        default_job_seconds: float = 30,
        workers: int = 1,
        max_attempts: int = 3,
        server_id: str | None = None,
        models: list[str] | None = None,
        delivery_claim_s: float = 60.0,
    ):
        """``server_id``/``models``: what a worker process of this store reads (its pod's queue and the
        shared queues of the models it holds; None = every shared queue)."""
        # A Redis restart or failover should cost a pause, not a crashed worker that reloads its model:
        # commands are retried for about 20 s. Every script is safe to run twice (see redis_scripts).
        self.r = redis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=12),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.prefix = prefix
        self.result_ttl_s = result_ttl_s
        self.default_job_seconds = default_job_seconds
        self.workers = max(workers, 1)
        self.max_attempts = max_attempts
        self.server_id = server_id
        self.models = models
        self.delivery_claim_s = delivery_claim_s
        self.retention_s = int(max(MIN_RETENTION_S, 2 * result_ttl_s))
        self._scripts = {name: self.r.register_script(PRELUDE + body) for name, body in SCRIPTS.items()}
        self._groups_ready: set[str] = set()

    # -- plumbing ----------------------------------------------------------------------------
    def k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _run(self, script: str, *args):
        return self._scripts[script](keys=[], args=[self.prefix, *args])

    def redis_now(self) -> float:
        sec, micro = self.r.time()
        return sec + micro / 1e6

    def close(self) -> None:
        self.r.close()

    def _record(self, h: dict[str, str]) -> JobRecord:
        retryable = h.get("retryable", "")
        return JobRecord(
            id=h["id"],
            kind=h["kind"],
            status=JobStatus(h["status"]),
            job=EditJob.model_validate_json(h["job"]),
            meta=JobMeta.model_validate_json(h["meta"]),
            created_at=float(h["created_at"]),
            started_at=_opt_float(h.get("started_at")),
            finished_at=_opt_float(h.get("finished_at")),
            attempts=int(h.get("attempts") or 0),
            cancel_requested=h.get("cancel_requested") == "1",
            progress=Progress.model_validate_json(h["progress"]) if h.get("progress") else None,
            results=[ResultFile.model_validate(r) for r in json.loads(h.get("results") or "[]")],
            seed=int(h["seed"]) if h.get("seed") else None,
            inference_seconds=_opt_float(h.get("inference_seconds")),
            cost_usd=int(h["cost_micro"]) / 1e6 if h.get("cost_micro") else None,
            warnings=json.loads(h.get("warnings") or "[]"),
            failure_reason_code=h.get("failure_reason_code") or None,
            error=h.get("error") or None,
            retryable=None if retryable == "" else retryable == "1",
            ran_on=h.get("ran_on") or None,
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
        """Queue a job; with a ``budget_usd``, its estimated cost is reserved in the same script
        (INSUFFICIENT_BALANCE when it does not fit beside the key's costs and open reservations)."""
        from ..errors import ServiceError

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
            raise ServiceError("QUEUE_FULL", f"the queue is full ({queued} jobs waiting)", retry_after_s=30)
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

    def queued_jobs(self, queue: str) -> list[str]:
        return self.r.zrange(self.k("queued", queue), 0, -1)

    def processing_jobs(self, queue: str) -> list[str]:
        ids = self.r.zrange(self.k("leases"), 0, -1)
        return [i for i in ids if self.r.hget(self.k("job", i), "queue") == queue]

    def queues(self) -> set[str]:
        return set(self.r.smembers(self.k("queues")))


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
