"""Server settings: command-line flags and ``RETOUCH_*`` environment variables, one model."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETOUCH_", extra="ignore")

    weights: str = "weights.yaml"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    server_id: str = Field(default_factory=socket.gethostname)
    workers: int = Field(default=1, ge=0)
    # Absolute URLs handed to clients (results, uploads); default http://host:port.
    public_base_url: str | None = None

    # Comma-separated accepted keys, `key` (scope edit) or `key:edit+admin`; with no keys here nor in
    # the keys file, any key is accepted (single-tenant box on loopback).
    api_keys: str | None = None
    # JSON object {api_key: budget in USD}; keys without an entry have no budget.
    key_budgets_usd: dict[str, float] = Field(default_factory=dict)
    price_per_gpu_hour_usd: float = Field(default=0.0, ge=0)
    # Depicta reports money in EUR: its cost_eur/balance_eur are the USD figures times this rate.
    eur_per_usd: float = Field(default=1.0, gt=0)

    result_ttl_s: float = Field(default=24 * 3600, gt=0)
    upload_ttl_s: float = Field(default=24 * 3600, gt=0)
    signed_url_ttl_s: float = Field(default=3600, gt=0)
    # Unset = generated once and kept in the data dir, so URLs stay valid across restarts.
    signing_secret: str | None = None
    # Standard Webhooks secret ("whsec_" + base64); unset = generated and kept in the data dir.
    webhook_secret: str | None = None

    fetch_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    fetch_timeout_s: float = Field(default=30.0, gt=0)
    fetch_connect_timeout_s: float = Field(default=5.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0)
    # Comma-separated host names and CIDRs that URL fetches (inputs, webhooks) may reach even though
    # they are private/loopback, e.g. an internal asset server: "assets.corp,10.20.0.0/16".
    fetch_allow: str | None = None
    upload_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_queued_jobs: int = Field(default=1000, ge=1)
    # Retry-After (s) sent with 503 when the queue is full.
    queue_full_retry_after_s: int = Field(default=10, ge=1)

    # Access (server/auth.py): hashed keys written by `retouch keys create`; default <data_dir>/api_keys.json.
    keys_file: Path | None = None
    # Serve on a non-loopback address without any API key (only for a trusted network).
    insecure_no_auth: bool = False
    # Whole request bodies (JSON with data: URLs, multipart uploads); larger ones get 413 unread.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # The request line plus headers in bytes, and the number of header fields: over either, 431
    # (server/http_limits.py). Defaults leave room for proxies' forwarding headers and long cookies.
    max_header_bytes: int = Field(default=64 * 1024, ge=4096)
    max_header_count: int = Field(default=100, ge=10)
    idempotency_ttl_s: float = Field(default=24 * 3600, gt=0)
    # Test-only fault injection in workers (server/worker.py, FaultHook); never set in production.
    fault_injection: str | None = None
    # SIGTERM: a running job gets this long to finish before it is handed back to the queue.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Ceiling of the back-off between restarts of a worker that keeps dying young.
    worker_restart_max_delay_s: float = Field(default=60.0, ge=0)

    # "module:callable" taking a Registry; tests swap in a fake to exercise the queue quickly.
    engine_factory: str = "pipelines:EditEngine"
    # The edit model this pod's workers load (weights.yaml models.<name>); unset = its default_model.
    # Jobs for another model go to a pod that holds it (scale-out) or are refused at submission.
    edit_model: str | None = None
    lease_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    worker_poll_s: float = Field(default=0.2, gt=0)
    # Seconds assumed for a job kind before any has finished (feeds the first ETAs).
    default_job_seconds: float = Field(default=30.0, gt=0)
    # Past the job time limit (checked between steps), a stuck worker gets this long before it is killed.
    hard_timeout_grace_s: float = Field(default=30.0, ge=0)
    cleanup_interval_s: float = Field(default=60.0, gt=0)
    # Free bytes the data disk must keep (server/storage.py): below it submissions and uploads are
    # refused with STORAGE_FULL, workers take no job and /readyz is 503. 256 MiB holds a few
    # full-size results (a 4k PNG is ~30 MB) plus the SQLite journal's growth. 0 turns it off.
    min_free_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # Retry-After (s) of a STORAGE_FULL answer: space comes back when an operator or the result
    # expiry frees it, so clients should not hammer.
    storage_full_retry_after_s: int = Field(default=30, ge=1)
    # A worker whose heartbeat thread is silent this long (stopped, frozen) is killed and replaced;
    # its job goes back through the lease. Well under lease_s so the job waits less than a lease.
    worker_hang_s: float = Field(default=10.0, gt=0)

    # Scale-out (docs/deploy.md). Set redis_url and the job store, queue, uploads, profiles and webhook
    # outbox live in Redis instead of the SQLite file, so several pods can share them.
    redis_url: str | None = None
    # Every key starts with "<prefix>:", so several deployments (or test runs) can share one Redis.
    redis_prefix: str = "retouch"
    # api: HTTP only (no GPU workers); worker: GPU workers plus health probes; all: both (one machine).
    role: Literal["all", "api", "worker"] = "all"
    # Where uploads, inputs and results live; a directory every pod mounts (NFS, shared volume) when
    # there are several pods. Unset = <data_dir>.
    files_dir: Path | None = None
    pod_heartbeat_s: float = Field(default=2.0, gt=0)
    # A pod not heard from for this long is dead: it is left out of /v1/servers and cannot be pinned.
    pod_dead_after_s: float = Field(default=15.0, gt=0)
    # Jobs pinned (server_id) to a pod that stays dead this long fail with SERVER_LOST (retryable).
    pinned_pod_timeout_s: float = Field(default=600.0, gt=0)

    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_backoff_initial_s: float = Field(default=2.0, gt=0)
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    # Logs: one JSON object per line on stderr (collectors index the fields); "text" for a terminal.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value):
        return value.upper() if isinstance(value, str) else value

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def keys_path(self) -> Path:
        return self.keys_file or self.data_dir / "api_keys.json"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "retouch.sqlite3"

    @property
    def files_root(self) -> Path:
        return self.files_dir or self.data_dir
