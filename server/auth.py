"""API keys: stored hashed, compared in constant time, with scopes and per-key limits.

Keys come from a JSON keys file (written by ``retouch keys create``; only SHA-256 hashes are kept)
and from ``RETOUCH_API_KEYS`` for quick setups (``key`` or ``key:edit+admin``). With neither, the
server runs open: any key is accepted and only separates owners (a single-tenant box on loopback).

The owner id of a key is a prefix of its hash, so jobs, uploads and profiles never hold the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field

from .errors import ServiceError

SCOPES = ("edit", "admin")
KEY_PREFIX = "rt_"


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def owner_of(api_key: str) -> str:
    return key_hash(api_key)[:32]


class ApiKey(BaseModel):
    """One key as the keys file stores it (never the key itself)."""

    id: str
    name: str
    sha256: str
    scopes: list[str] = Field(default_factory=lambda: ["edit"])
    budget_usd: float | None = None
    rate_per_min: int | None = None
    concurrency: int | None = None
    created_at: float = 0.0

    @property
    def owner(self) -> str:
        return self.sha256[:32]


def parse_env_keys(spec: str | None, budgets: dict[str, float]) -> list[ApiKey]:
    """``RETOUCH_API_KEYS``: comma-separated ``key`` (scope edit) or ``key:scope+scope``."""
    keys = []
    for i, item in enumerate(x.strip() for x in (spec or "").split(",")):
        if not item:
            continue
        secret, _, scopes = item.partition(":")
        wanted = [s for s in scopes.split("+") if s] or ["edit"]
        unknown = set(wanted) - set(SCOPES)
        if unknown:
            raise ValueError(f"RETOUCH_API_KEYS entry {i}: unknown scope(s) {sorted(unknown)}")
        keys.append(
            ApiKey(
                id=f"env{i}",
                name=f"env{i}",
                sha256=key_hash(secret),
                scopes=wanted,
                budget_usd=budgets.get(secret),
            )
        )
    return keys


class KeysFile:
    """The JSON keys file; re-read when it changes, so new keys work without a restart."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._keys: list[ApiKey] = []
        self._lock = threading.Lock()

    def records(self) -> list[ApiKey]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                raw = json.loads(self.path.read_text() or "[]")
                self._keys = [ApiKey.model_validate(k) for k in raw]
                self._stamp = stamp
            return list(self._keys)

    def add(
        self,
        name: str,
        scopes: list[str],
        *,
        budget_usd: float | None = None,
        rate_per_min: int | None = None,
        concurrency: int | None = None,
    ) -> tuple[str, ApiKey]:
        """Create a key; returns the plaintext (shown once) and the stored record."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {list(SCOPES)}")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id="key_" + secrets.token_hex(6),
            name=name,
            sha256=key_hash(secret),
            scopes=sorted(set(scopes)),
            budget_usd=budget_usd,
            rate_per_min=rate_per_min,
            concurrency=concurrency,
            created_at=time.time(),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            current = json.loads(self.path.read_text() or "[]") if self.path.exists() else []
            current.append(record.model_dump())
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(current, indent=2) + "\n")
            os.chmod(tmp, 0o600)
            tmp.replace(self.path)
        return secret, record


def bearer_key(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (any case of the scheme), else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def presented_key(authorization: str | None, x_api_key: str | None, *, bearer_first: bool) -> str | None:
    """The key a client sent, in ``Authorization`` (``Bearer <key>``, or a bare key) or ``X-API-Key``;
    ``bearer_first`` for the contracts whose own header is Authorization."""
    bare = (authorization or "").strip()
    # OpenAI's clients send "Bearer <key>"; a bare key (no scheme) is taken as is, another scheme is not a key
    from_authorization = bearer_key(authorization) or (bare if bare and " " not in bare else None)
    first, second = (from_authorization, x_api_key) if bearer_first else (x_api_key, from_authorization)
    return first or second or None


class KeyRing:
    def __init__(self, keys_file: KeysFile, env_keys: list[ApiKey]):
        self.keys_file = keys_file
        self.env_keys = env_keys

    def all(self) -> list[ApiKey]:
        return self.env_keys + self.keys_file.records()

    def is_open(self) -> bool:
        return not self.all()

    def by_owner(self, owner: str) -> ApiKey | None:
        return next((k for k in self.all() if k.owner == owner), None)

    def match(self, api_key: str) -> ApiKey | None:
        """The record of ``api_key``; every stored hash is compared, in constant time each."""
        digest = key_hash(api_key)
        found = None
        for record in self.all():
            if hmac.compare_digest(record.sha256, digest):
                found = record
        return found

    def authenticate(self, key: str | None, scope: str) -> str:
        """The owner id of an accepted key; 401 for a missing/unknown key, 403 for a missing scope."""
        if self.is_open():
            return owner_of(key or "")
        if not key:
            raise ServiceError("UNAUTHORIZED", "missing API key (send X-API-Key or Authorization: Bearer)")
        record = self.match(key)
        if record is None:
            raise ServiceError("UNAUTHORIZED", "invalid API key")
        if scope not in record.scopes:
            raise ServiceError("FORBIDDEN", f"this API key lacks the {scope!r} scope")
        return record.owner


def is_loopback_host(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def key_checking(ring: KeyRing, keys_path: Path) -> str:
    """One line for the start log: how a presented key will be judged."""
    if ring.is_open():
        return (
            f"none configured, so any key is accepted (loopback only); `retouch keys create` (keys file"
            f" {keys_path}) or RETOUCH_API_KEYS turns checking on"
        )
    from_file = len(ring.keys_file.records())
    return (
        f"only configured keys are accepted: {len(ring.env_keys)} from RETOUCH_API_KEYS, {from_file} in"
        f" the keys file {keys_path} (re-read on change, no restart needed)"
    )


def unsafe_bind_reason(settings, ring: KeyRing) -> str | None:
    """Why serving as configured would expose an unauthenticated API, or None."""
    if ring.is_open() and not is_loopback_host(settings.host) and not settings.insecure_no_auth:
        return (
            f"refusing to serve on {settings.host} without API keys: create one with "
            "`retouch keys create --name NAME --scope edit`, set RETOUCH_API_KEYS, or pass "
            "--insecure-no-auth if this network is trusted"
        )
    return None
