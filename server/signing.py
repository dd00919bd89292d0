"""Signed, expiring URLs for files this server hands out: HMAC-SHA256 over path and expiry."""

from __future__ import annotations

import hashlib
import hmac
import time

from .errors import ServiceError


def signature(secret: str, path: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, base_url: str, path: str, ttl_s: float, *, now: float | None = None) -> str:
    expires = int((now or time.time()) + ttl_s)
    return f"{base_url}{path}?expires={expires}&sig={signature(secret, path, expires)}"


def verify(
    secret: str, path: str, expires: str | int | None, sig: str | None, *, now: float | None = None
) -> None:
    """Tampered or unsigned -> 403; genuine but past its expiry -> 410."""
    try:
        expires_at = int(expires)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ServiceError("SIGNATURE_INVALID", "this URL is not signed") from None
    if not sig or not hmac.compare_digest(signature(secret, path, expires_at), sig):
        raise ServiceError("SIGNATURE_INVALID", "this URL's signature does not match")
    if expires_at < (now or time.time()):
        raise ServiceError(
            "URL_EXPIRED", "this URL has expired; ask for the job status again for a fresh one"
        )
