"""Server settings: command-line flags and ``RETOUCH_*`` environment variables, one model."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from pydantic import Field
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

    # Comma-separated accepted X-API-Key values; unset = any key is accepted (single-tenant box).
    api_keys: str | None = None
    # JSON object {api_key: budget in USD}; keys without an entry have no budget.
    key_budgets_usd: dict[str, float] = Field(default_factory=dict)
    price_per_gpu_hour_usd: float = Field(default=0.0, ge=0)

    result_ttl_s: float = Field(default=24 * 3600, gt=0)
    upload_ttl_s: float = Field(default=24 * 3600, gt=0)
    signed_url_ttl_s: float = Field(default=3600, gt=0)
    # Unset = generated once and kept in the data dir, so URLs stay valid across restarts.
    signing_secret: str | None = None
    # Standard Webhooks secret ("whsec_" + base64); unset = generated and kept in the data dir.
    webhook_secret: str | None = None

    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    fetch_timeout_s: float = Field(default=20.0, gt=0)
    upload_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_queued_jobs: int = Field(default=1000, ge=1)

    # "module:callable" taking a Registry; tests swap in a fake to exercise the queue quickly.
    engine_factory: str = "pipelines:EditEngine"
    lease_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    worker_poll_s: float = Field(default=0.2, gt=0)
    # Seconds assumed for a job kind before any has finished (feeds the first ETAs).
    default_job_seconds: float = Field(default=30.0, gt=0)
    # Past the job time limit (checked between steps), a stuck worker gets this long before it is killed.
    hard_timeout_grace_s: float = Field(default=30.0, ge=0)
    cleanup_interval_s: float = Field(default=60.0, gt=0)

    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_backoff_initial_s: float = Field(default=2.0, gt=0)
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def accepted_keys(self) -> set[str] | None:
        if not self.api_keys:
            return None
        return {k.strip() for k in self.api_keys.split(",") if k.strip()}

    @property
    def db_path(self) -> Path:
        return self.data_dir / "retouch.sqlite3"

    def ensure_secrets(self) -> None:
        """Create the data dir and fill unset secrets from files kept there (made on first run)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.signing_secret is None:
            self.signing_secret = _persisted(self.data_dir / "signing_secret", lambda: secrets.token_hex(32))
        if self.webhook_secret is None:
            self.webhook_secret = _persisted(
                self.data_dir / "webhook_secret", lambda: "whsec_" + _b64(secrets.token_bytes(32))
            )


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def _persisted(path: Path, make) -> str:
    if path.is_file():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value
