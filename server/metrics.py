"""Prometheus metrics for ``GET /metrics``.

Two sources, gathered at scrape time:

- The store (whatever process wrote it): queue depth, jobs by state and contract, worker
  heartbeats and the webhook outbox. Read fresh on every scrape, so they are right even when the
  jobs ran in other processes or pods.
- Events counted where they happen: per-stage latencies, GPU memory and jobs run (worker
  processes), webhook attempts (API process). Workers are separate processes, so prometheus-client
  runs in its multiprocess mode: every process writes its samples to memory-mapped files in one
  directory that the API process aggregates. The mode is chosen when prometheus-client is first
  imported, so the directory is settled here, before that import; ``retouch serve`` gives each
  server a fresh one (see ``fresh_multiprocess_dir``), and spawned workers inherit it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time

log = logging.getLogger("retouch.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def fresh_multiprocess_dir() -> str:
    """A new, empty directory for this server's metric files (removed when the server exits).

    Call before anything imports prometheus-client; a directory inherited from elsewhere would
    mix another server's samples into ours.
    """
    path = tempfile.mkdtemp(prefix="retouch-metrics-")
    os.environ[MULTIPROC_ENV] = path
    atexit.register(shutil.rmtree, path, True)
    return path


if not os.environ.get(MULTIPROC_ENV):
    fresh_multiprocess_dir()

from prometheus_client import (  # noqa: E402  (the directory must be set before this import)
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

# Tiny CPU jobs take tenths of a second, full-size GPU jobs tens of seconds, 4k refinement minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

STAGE_SECONDS = Histogram(
    "retouch_stage_seconds",
    "Seconds a job spent in each engine stage (encode, denoise, refine, decode, postprocess)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "retouch_job_inference_seconds",
    "Seconds from a worker taking a job to its result being written",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "retouch_job_queue_wait_seconds",
    "Seconds a job waited in the queue before a worker took it",
    buckets=LATENCY_BUCKETS,
)
JOBS_RUN = Counter(
    "retouch_worker_jobs",
    "Jobs run by workers, by outcome (completed, failed, cancelled, handed_back, superseded)",
    ["outcome"],
)
# "livemax": a dead worker's values disappear (the supervisor marks it dead); one value per label set.
GPU_MEMORY_BYTES = Gauge(
    "retouch_gpu_memory_bytes",
    "GPU memory held by tensors of a worker's engine now (absent on CPU)",
    ["worker", "device"],
    multiprocess_mode="livemax",
)
GPU_MEMORY_PEAK_BYTES = Gauge(
    "retouch_gpu_memory_peak_bytes",
    "Most GPU memory a worker's engine has held since it started (absent on CPU)",
    ["worker", "device"],
    multiprocess_mode="livemax",
)
WORKER_KILLS = Counter(
    "retouch_worker_kills",
    "Workers the supervisor killed, by reason (hung: heartbeat silent; job_timeout: past the hard limit)",
    ["reason"],
)
for _reason in ("hung", "job_timeout"):  # a 0 series before the first kill, so its panel has a line
    WORKER_KILLS.labels(_reason)
WEBHOOK_ATTEMPTS = Counter(
    "retouch_webhook_attempts",
    "Webhook delivery attempts, by result (delivered, failed = will retry, gave_up)",
    ["result"],
)


def is_multiprocess() -> bool:
    from prometheus_client import values

    return values.ValueClass.__name__ == "MmapedValue"


# -- worker side ---------------------------------------------------------------------------
def record_job(outcome: str, kind: str | None = None, timings: dict[str, float] | None = None) -> None:
    JOBS_RUN.labels(outcome).inc()
    for stage, seconds in (timings or {}).items():
        if stage == "total":
            continue
        if seconds > 0:
            STAGE_SECONDS.labels(stage).observe(seconds)
    if kind is not None and timings and "total" in timings:
        INFERENCE_SECONDS.labels(kind).observe(timings["total"])


def record_queue_wait(seconds: float) -> None:
    QUEUE_WAIT_SECONDS.observe(max(seconds, 0.0))


def report_gpu_memory(worker_id: str) -> None:
    """Set the GPU memory gauges from the engine's torch, if it runs on CUDA.

    The server never imports torch itself; it only looks at the copy the engine already loaded,
    so a CPU worker (or one still loading) simply has no GPU samples.
    """
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            GPU_MEMORY_BYTES.labels(worker_id, device).set(torch.cuda.memory_allocated(index))
            GPU_MEMORY_PEAK_BYTES.labels(worker_id, device).set(torch.cuda.max_memory_allocated(index))
    except Exception:  # a metrics read must never take a worker down
        log.debug("could not read GPU memory", exc_info=True)


def mark_worker_dead(pid: int | None) -> None:
    """Drop a dead worker's live gauges (its counters and histograms keep counting)."""
    if pid is not None and is_multiprocess():
        multiprocess.mark_process_dead(pid)


# -- API side ------------------------------------------------------------------------------
def record_webhook(result: str) -> None:
    WEBHOOK_ATTEMPTS.labels(result).inc()


def record_worker_kill(reason: str) -> None:
    WORKER_KILLS.labels(reason).inc()


class StorageCollector:
    """Free space of the data disk, read at scrape time (``server.storage.StorageGuard``)."""

    def __init__(self, storage):
        self.storage = storage

    def collect(self):
        free = GaugeMetricFamily(
            "retouch_storage_free_bytes", "Free bytes on each volume the server writes to", labels=["volume"]
        )
        full = GaugeMetricFamily(
            "retouch_storage_full",
            "1 while a volume is under RETOUCH_MIN_FREE_BYTES: submissions and uploads answer STORAGE_FULL",
        )
        floor = GaugeMetricFamily(
            "retouch_storage_min_free_bytes", "The free-space floor (RETOUCH_MIN_FREE_BYTES)"
        )
        space = self.storage.space()
        for volume in space:
            free.add_metric([volume.name], volume.free_bytes)
        floor.add_metric([], self.storage.min_free_bytes)
        full.add_metric([], 1 if self.storage.shortage() is not None else 0)
        yield free
        yield full
        yield floor


class StoreCollector:
    """Gauges read from the store at scrape time (``store.metrics_snapshot()``)."""

    def __init__(self, store, heartbeat_max_age_s: float):
        self.store = store
        self.heartbeat_max_age_s = heartbeat_max_age_s

    def collect(self):
        snapshot_of = getattr(self.store, "metrics_snapshot", None)
        if snapshot_of is None:
            return
        snap = snapshot_of()
        depth = GaugeMetricFamily("retouch_queue_depth", "Jobs waiting in each queue", labels=["queue"])
        for queue, count in sorted(snap["queues"].items()):
            depth.add_metric([queue], count)
        yield depth
        jobs = GaugeMetricFamily(
            "retouch_jobs", "Jobs the store holds, by state and contract", labels=["state", "contract"]
        )
        for (state, contract), count in sorted(snap["jobs"].items()):
            jobs.add_metric([state, contract], count)
        yield jobs
        now = time.time()
        age = GaugeMetricFamily(
            "retouch_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat",
            labels=["worker", "state"],
        )
        up = GaugeMetricFamily(
            "retouch_worker_up",
            f"1 if the worker is ready and beat within {self.heartbeat_max_age_s:g} s, else 0",
            labels=["worker"],
        )
        for worker in snap["workers"]:
            seconds = max(now - worker["heartbeat_at"], 0.0)
            age.add_metric([worker["id"], worker["state"]], round(seconds, 3))
            alive = worker["state"] == "ready" and seconds <= self.heartbeat_max_age_s
            up.add_metric([worker["id"]], 1 if alive else 0)
        yield age
        yield up
        outbox = GaugeMetricFamily(
            "retouch_webhook_outbox",
            "Webhook deliveries in the outbox, by state (pending, delivered, failed = gave up)",
            labels=["state"],
        )
        for state in ("pending", "delivered", "failed"):
            outbox.add_metric([state], snap["webhooks"].get(state, 0))
        yield outbox


class _ThisProcess:
    """Forwards this process's own metrics when multiprocess mode could not be used."""

    def collect(self):
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def exposition(store, heartbeat_max_age_s: float, storage=None) -> tuple[bytes, str]:
    """The body and content type of ``GET /metrics``."""
    registry = CollectorRegistry()
    if is_multiprocess():
        multiprocess.MultiProcessCollector(registry)
    else:  # prometheus-client was imported before our directory was set: only this process counts
        registry.register(_ThisProcess())
    registry.register(StoreCollector(store, heartbeat_max_age_s))
    if storage is not None:
        registry.register(StorageCollector(storage))
    return generate_latest(registry), CONTENT_TYPE_LATEST
