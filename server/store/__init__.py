"""The durable store behind the queue. ``JobStore`` is the interface, the union of one Protocol per
role (base.py: ``JobQueue``, ``Uploads``, ``Outbox``...); SQLite is the embedded default, Redis
(redis_store.py) the shared store of a multi-pod deployment (docs/deploy.md)."""

from .base import (
    AdmissionState,
    Costs,
    JobQueue,
    JobStore,
    Metrics,
    Outbox,
    Pods,
    Profile,
    Profiles,
    QueueFull,
    SharedStore,
    Upload,
    Uploads,
    WebhookDelivery,
    Workers,
)
from .sqlite import SQLiteStore

__all__ = [
    "AdmissionState",
    "Costs",
    "JobQueue",
    "JobStore",
    "Metrics",
    "Outbox",
    "Pods",
    "Profile",
    "Profiles",
    "QueueFull",
    "SQLiteStore",
    "SharedStore",
    "Upload",
    "Uploads",
    "WebhookDelivery",
    "Workers",
    "open_store",
]


def open_store(settings, *, server_id: str | None = None, models: list[str] | None = None) -> JobStore:
    """The store the settings name: Redis when ``redis_url`` is set (several pods), else SQLite.

    ``server_id``/``models`` matter only to worker processes on Redis: which queues they read."""
    if settings.redis_url:
        from .redis_store import RedisStore  # redis-py is only needed by multi-pod deployments

        return RedisStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            result_ttl_s=settings.result_ttl_s,
            default_job_seconds=settings.default_job_seconds,
            workers=settings.workers,
            max_attempts=settings.max_attempts,
            server_id=server_id,
            models=models,
            delivery_claim_s=settings.webhook_timeout_s + 30,
        )
    return SQLiteStore(
        settings.db_path,
        result_ttl_s=settings.result_ttl_s,
        default_job_seconds=settings.default_job_seconds,
        workers=settings.workers,
    )
