"""Webhook delivery from the persistent outbox, in the API process (workers never wait on it).

A terminal job state and its outbox row are written in one transaction, so no event is lost.
Each attempt's outcome is stored before the next is scheduled, so a restart resumes where it
stopped; the ``webhook-id`` is stable per job and event, so a receiver can drop the rare repeat
(a crash between the receiver's 2xx and our write).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

import httpx
import tenacity
from standardwebhooks import Webhook

from . import metrics
from .errors import ServiceError
from .fetch import FetchPolicy, safe_post
from .jobs import JobRecord, WebhookState
from .storage import is_disk_full
from .store import JobStore, WebhookDelivery

log = logging.getLogger("retouch.webhooks")

# A delivery whose outcome could not be stored (the database's disk is full) stays due; sending it
# again at once would only repeat it to its receiver every 0.2 s, so the outbox pauses this long.
STORE_FULL_PAUSE_S = 10.0


def delivery_id(job_id: str, status: str) -> str:
    """The outbox row (and ``webhook-id``) of a job's terminal event, as the stores write it."""
    return f"msg_{job_id}_{status}"


def webhook_state(store: JobStore, record: JobRecord) -> WebhookState | None:
    """Where the job's webhook stands, for its status body; None when it has no webhook URL."""
    if not record.meta.callback_url:
        return None
    # The outbox row is written with the terminal state; until then the webhook is to come.
    if not record.status.is_terminal():
        return WebhookState(state="pending")
    delivery = store.get_delivery(delivery_id(record.id, record.status.value))
    if delivery is None:  # expired from the outbox (Redis keeps rows twice the result TTL)
        return None
    state = delivery.state if delivery.state in ("delivered", "failed") else "pending"
    return WebhookState(state=state, attempts=delivery.attempts, last_error=delivery.last_error)


class WebhookBodies(Protocol):
    """What a contract's service gives webhooks (server/contracts/base.py ContractService)."""

    def webhook_body(self, record: JobRecord) -> dict: ...
    def after_webhook(self, record: JobRecord) -> None: ...


class WebhookSender:
    def __init__(self, store: JobStore, settings, contracts: Mapping[str, WebhookBodies] | None):
        """``contracts``: by contract name, the body to post for a job (what its status endpoint
        would answer) and what to do once a receiver accepted it."""
        self.store = store
        self.settings = settings
        self.contracts = contracts or {}
        self.signer = Webhook(settings.webhook_secret)
        # Receivers are client-named URLs: the same SSRF checks (and allowlist) as input fetches.
        self.policy = FetchPolicy.from_settings(settings)
        # "Full jitter": uniform in [0, min(cap, initial * 2^n)]. wait_exponential_jitter caps after
        # adding its jitter, so once at the cap every receiver's retries would fall in lockstep.
        self._backoff = tenacity.wait_random_exponential(
            multiplier=settings.webhook_backoff_initial_s, max=settings.webhook_backoff_max_s
        )
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="webhooks")
        self._paused_until = 0.0  # monotonic; see STORE_FULL_PAUSE_S

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            if time.monotonic() < self._paused_until:
                continue
            try:
                for delivery in self.store.due_deliveries(limit=20):
                    with self._lock:
                        if delivery.id in self._in_flight:
                            continue
                        self._in_flight.add(delivery.id)
                    self._pool.submit(self._deliver_and_release, delivery)
            except Exception:
                log.exception("webhook loop failed")

    def _deliver_and_release(self, delivery: WebhookDelivery) -> None:
        try:
            self.deliver(delivery)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            if time.monotonic() >= self._paused_until:  # one line per pause
                log.warning("webhook outbox paused for %g s: the store's disk is full", STORE_FULL_PAUSE_S)
            self._paused_until = time.monotonic() + STORE_FULL_PAUSE_S
        finally:
            with self._lock:
                self._in_flight.discard(delivery.id)

    def next_delay(self, attempt: int) -> float:
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return self._backoff(state)

    def deliver(self, delivery: WebhookDelivery) -> bool:
        record = self.store.get_job(delivery.job_id)
        if record is None:
            self.store.delivery_failed(delivery.id, "the job no longer exists", None)
            return False
        contract = self.contracts[delivery.contract]
        payload = json.dumps(contract.webhook_body(record))
        timestamp = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self.signer.sign(delivery.id, timestamp, payload),
            "user-agent": "retouch-webhooks/1",
        }
        stop, retry_after = False, 0.0
        try:
            resp = safe_post(
                delivery.url,
                content=payload,
                headers=headers,
                timeout_s=self.settings.webhook_timeout_s,
                policy=self.policy,
            )
            if 200 <= resp.status_code < 300:
                self.store.delivery_done(delivery.id)
                metrics.record_webhook("delivered")
                try:
                    contract.after_webhook(record)
                except Exception:
                    log.exception("after-delivery step failed", extra={"job_id": delivery.job_id})
                log.info(
                    "webhook delivered",
                    extra={
                        "job_id": delivery.job_id,
                        "webhook_id": delivery.id,
                        "attempt": delivery.attempts + 1,
                    },
                )
                return True
            error = f"HTTP {resp.status_code}"
            # 410 Gone: the receiver says this endpoint is gone for good (Standard Webhooks).
            stop = resp.status_code == 410
            header = resp.headers.get("retry-after", "")
            retry_after = float(header) if header.isdigit() else 0.0
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        except ServiceError as exc:  # a blocked address does not become allowed by waiting
            error, stop = exc.message, True
        attempt = delivery.attempts + 1
        give_up = stop or attempt >= self.settings.webhook_max_attempts
        delay = max(self.next_delay(attempt), min(retry_after, self.settings.webhook_backoff_max_s))
        next_at = None if give_up else time.time() + delay
        log.warning(
            "webhook %s attempt %d failed (%s)%s",
            delivery.id,
            attempt,
            error,
            "; giving up" if give_up else "",
            extra={"job_id": delivery.job_id},
        )
        metrics.record_webhook("gave_up" if give_up else "failed")
        self.store.delivery_failed(delivery.id, error, next_at)
        return False
