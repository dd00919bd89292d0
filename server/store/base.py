"""What the server needs from a store, one Protocol per role (queue, costs, workers, uploads, profiles,
webhook outbox, metrics, admission state, pods); ``JobStore`` is their union."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import ServiceError
from ..eta import CostModel
from ..jobs import EditJob, JobMeta, JobRecord, Progress, ResultFile


@dataclass
class Upload:
    id: str
    owner: str
    filename: str
    content_type: str
    size_bytes: int
    path: str  # relative to the data dir
    created_at: float
    expires_at: float


@dataclass
class Profile:
    id: str
    owner: str
    data: dict
    created_at: float


@dataclass
class WebhookDelivery:
    id: str  # the webhook-id header: stable per job and event, so receivers can dedupe
    job_id: str
    event: str
    url: str
    contract: str
    attempts: int
    state: str  # pending, delivered, failed
    next_attempt_at: float
    last_error: str | None = None


class QueueFull(ServiceError):
    """The store found no room for another queued job (``max_queued`` reached).

    The store only knows the count; how long a client should wait is the admission's policy, so
    ``Admission.admit`` (server/limits.py) answers it with the settings' Retry-After. It is still a
    ``ServiceError`` (503 QUEUE_FULL) so that one escaping elsewhere is answered the same way."""

    def __init__(self, queued: int):
        super().__init__("QUEUE_FULL", f"the queue is full ({queued} jobs waiting)")
        self.queued = queued


class Waker(Protocol):
    def wait(self, timeout: float) -> bool: ...


# -- role protocols: a caller that needs one concern annotates with that role ----------------------


class JobQueue(Protocol):
    """The leased job queue: submit, claim, progress, the first terminal write, lease recovery."""

    # With a budget, the job's estimated cost is reserved atomically with queueing it, or the job is
    # refused (INSUFFICIENT_BALANCE); its terminal write releases the reservation. No room left in
    # the queue raises ``QueueFull``.
    def add_job(
        self,
        job_id: str,
        job: EditJob,
        meta: JobMeta,
        *,
        max_queued: int,
        budget_usd: float | None = None,
        reserve_usd: float = 0.0,
    ) -> JobRecord: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, owner: str, *, contract: str | None = None, limit: int = 50) -> list[JobRecord]: ...
    def claim(self, worker_id: str, lease_s: float) -> JobRecord | None: ...
    # Something an idle worker waits on: ``wait(timeout) -> bool`` returns early when a job is
    # queued on any pod. None: the store has no such signal (one machine: the supervisor's pipe).
    def open_waker(self) -> Waker | None: ...
    def renew_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool: ...
    def set_progress(self, job_id: str, worker_id: str, progress: Progress) -> bool: ...
    def complete(
        self,
        job_id: str,
        results: list[ResultFile],
        seed: int,
        inference_seconds: float,
        warnings: list[str],
        cost_usd: float | None = None,
    ) -> bool: ...
    def fail(self, job_id: str, code: str, message: str, retryable: bool) -> bool: ...
    def cancel(self, job_id: str) -> JobRecord | None: ...
    def requeue_expired(self, max_attempts: int) -> list[str]: ...
    def release_worker(self, worker_id: str) -> None: ...
    # The worker gives up a job it holds (a full disk): queued again now; False if no longer its.
    def hand_back(self, job_id: str, worker_id: str) -> bool: ...
    def overdue(self, timeout_s: float) -> list[tuple[str, str]]: ...
    def expire_results(self) -> list[str]: ...


class Costs(Protocol):
    """Money (stored costs + open reservations) and time (server/eta.py)."""

    def committed_usd(self, owner: str) -> float: ...
    def calibration_samples(self, limit: int = 50) -> list[tuple[dict[str, float], float]]: ...
    def estimate_new(self, work: dict[str, float] | None) -> float: ...
    def cost_model(self) -> CostModel: ...


class Workers(Protocol):
    """Heartbeats of worker processes."""

    def worker_heartbeat(self, worker_id: str, pid: int, state: str) -> None: ...
    def ready_workers(self, max_age_s: float) -> list[str]: ...


class Uploads(Protocol):
    def add_upload(self, upload: Upload) -> None: ...
    def get_upload(self, upload_id: str) -> Upload | None: ...
    def expire_uploads(self) -> list[str]: ...


class Profiles(Protocol):
    def add_profile(self, profile: Profile) -> None: ...
    def get_profile(self, profile_id: str) -> Profile | None: ...
    def list_profiles(self, owner: str) -> list[Profile]: ...
    def delete_profile(self, profile_id: str) -> bool: ...


class Outbox(Protocol):
    """Webhook deliveries, written with the job's terminal state and posted by server/webhooks.py."""

    def due_deliveries(self, limit: int) -> list[WebhookDelivery]: ...
    def delivery_done(self, delivery_id: str) -> None: ...
    def delivery_failed(self, delivery_id: str, error: str, next_attempt_at: float | None) -> None: ...
    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None: ...


class Metrics(Protocol):
    # GET /metrics leaves the store's gauges out without it.
    # {"queues": {name: depth}, "jobs": {(state, contract): n},
    #  "workers": [{"id", "state", "heartbeat_at"}], "webhooks": {state: n}}
    def metrics_snapshot(self) -> dict: ...


class AdmissionState(Protocol):
    """What server/limits.py reads and writes: queue room, per-key rate windows, Idempotency-Key."""

    def queued_count(self) -> int: ...
    def active_count(self, owner: str) -> int: ...
    def rate_hit(self, bucket: str, limit: int, window_s: float) -> int: ...
    def idempotency_begin(
        self, owner: str, key: str, fingerprint: str, ttl_s: float
    ) -> tuple[str, str | None]: ...
    def idempotency_finish(self, owner: str, key: str, job_id: str) -> None: ...
    def idempotency_abort(self, owner: str, key: str) -> None: ...


class Pods(Protocol):
    """The pod registry of a store several pods share (docs/deploy.md); server/pods.py uses it
    only when the store's ``shared`` is True."""

    def pod_heartbeat(self, info: dict) -> None: ...
    def pods(self) -> list[dict]: ...
    def get_pod(self, server_id: str) -> dict | None: ...
    def pod_stopped(self, server_id: str) -> None: ...
    def queues(self) -> set[str]: ...
    def queued_jobs(self, queue: str) -> list[str]: ...
    def processing_jobs(self, queue: str) -> list[str]: ...
    # One value for every pod: the first to ask stores ``make()``, the others read it.
    def shared_secret(self, name: str, make: Callable[[], str]) -> str: ...


class JobStore(JobQueue, Costs, Workers, Uploads, Profiles, Outbox, Metrics, AdmissionState, Protocol):
    """Everything the server needs from a store. ``shared``: whether other pods see the same store
    (then it is a ``SharedStore``, with the ``Pods`` role); False = this server only."""

    shared: bool


class SharedStore(JobStore, Pods, Protocol):
    """A store several pods share (Redis)."""
