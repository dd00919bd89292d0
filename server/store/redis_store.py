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

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..jobs import EditJob, JobMeta, JobRecord, JobStatus, Progress, ResultFile
from .redis_costs import RedisCostTables
from .redis_leases import RedisLeases
from .redis_limits import RedisLimitTables
from .redis_queue import RedisQueue
from .redis_scripts import PRELUDE, SCRIPTS
from .redis_side import RedisSideTables

# Finished job records stay readable this long (at least twice the result TTL).
MIN_RETENTION_S = 7 * 24 * 3600


def _opt_float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


class RedisStore(RedisQueue, RedisLeases, RedisSideTables, RedisLimitTables, RedisCostTables):
    """The queue (redis_queue), lease recovery (redis_leases), workers, pods, side tables, admission
    state and costs over one Redis; the mixins share this class's ``r``, ``k``, ``_run``, ``_record``."""

    shared = True  # every pod of the deployment reads and writes the same Redis

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
