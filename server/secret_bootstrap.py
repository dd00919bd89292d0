"""Signing and webhook secrets a server starts with when the settings leave them unset.

Kept out of ``Settings`` so settings stay plain data that any module may import: filling the
secrets needs the data dir and, with several pods, the shared Redis store.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from pathlib import Path

from .settings import Settings


def bootstrap_secrets(settings: Settings) -> None:
    """Create the data dir and fill unset secrets: from the shared Redis when there are several
    pods (one secret for all of them), else from files kept in the data dir (made on first run)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.redis_url and (settings.signing_secret is None or settings.webhook_secret is None):
        share_secrets(settings)
    if settings.signing_secret is None:
        settings.signing_secret = _persisted(settings.data_dir / "signing_secret", _signing_secret)
    if settings.webhook_secret is None:
        settings.webhook_secret = _persisted(settings.data_dir / "webhook_secret", _webhook_secret)


def share_secrets(settings: Settings) -> None:
    """Unset signing/webhook secrets come from Redis, so every pod signs and verifies alike."""
    from .store.redis_store import RedisStore  # redis-py is only needed by multi-pod deployments

    store = RedisStore(settings.redis_url, prefix=settings.redis_prefix)
    try:
        if settings.signing_secret is None:
            settings.signing_secret = store.shared_secret("signing", _signing_secret)
        if settings.webhook_secret is None:
            settings.webhook_secret = store.shared_secret("webhook", _webhook_secret)
    finally:
        store.close()


def _signing_secret() -> str:
    return secrets.token_hex(32)


def _webhook_secret() -> str:
    # the Standard Webhooks format: "whsec_" + base64 of the key bytes
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _persisted(path: Path, make: Callable[[], str]) -> str:
    if path.is_file():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value
