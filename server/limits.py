"""Admission control: what is checked before a job costs anything (a fetch, a decode, a queue row).

``Admission.admit`` runs at the top of ``Core.submit`` for every contract: Idempotency-Key replay,
input caps, budget, per-key rate and concurrency, then a queue slot that is reserved *before* any
URL is fetched or picture decoded, so a burst against a full queue costs a count query each.
``RequestGuard`` caps request bodies (413 before the body is read) and exposes request headers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import KeyRing
from .errors import ServiceError
from .store.base import AdmissionState, QueueFull

RATE_WINDOW_S = 60.0
MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass
class Ticket:
    """An admitted request: ``existing_job_id`` is set when an Idempotency-Key replays a job."""

    existing_job_id: str | None = None
    job_id: str | None = None


def fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Admission:
    def __init__(self, settings, store: AdmissionState, keys: KeyRing, balance, max_prompt_chars: int):
        """``balance(owner) -> float | None``: what is left of the key's budget (None = no budget);
        ``max_prompt_chars`` comes from weights.yaml limits (checked again, later, by the engine)."""
        self.settings = settings
        self.max_prompt_chars = max_prompt_chars
        self.store = store
        self.keys = keys
        self.balance = balance
        self._lock = threading.Lock()
        self._reserved = 0
        self._reserved_by: Counter[str] = Counter()

    @contextmanager
    def admit(self, owner: str, prompt: str, body: dict, idem_key: str | None = None) -> Iterator[Ticket]:
        ticket = Ticket()
        if idem_key is not None:
            ticket.existing_job_id = self._idempotency(owner, idem_key, body)
            if ticket.existing_job_id is not None:
                yield ticket
                return
        try:
            try:
                self._check_prompt(prompt)
                record = self.keys.by_owner(owner)
                self._check_budget_and_rate(owner, record)
                with self._queue_slot(owner, record.concurrency if record else None):
                    yield ticket
            except QueueFull as full:
                # The one place a full queue becomes an answer, whether this check or the store's
                # insert (another pod took the room meanwhile) found it: Retry-After is the settings'.
                raise ServiceError(
                    "QUEUE_FULL",
                    f"the queue is full ({full.queued} jobs waiting); retry later",
                    retry_after_s=self.settings.queue_full_retry_after_s,
                ) from None
        except BaseException:
            if idem_key is not None:
                self.store.idempotency_abort(owner, idem_key)
            raise
        if idem_key is not None and ticket.job_id is not None:
            self.store.idempotency_finish(owner, idem_key, ticket.job_id)

    def _idempotency(self, owner: str, key: str, body: dict) -> str | None:
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise ServiceError(
                "INVALID_PARAMETERS",
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                field="Idempotency-Key",
            )
        state, job_id = self.store.idempotency_begin(
            owner, key, fingerprint(body), self.settings.idempotency_ttl_s
        )
        if state == "mismatch":
            raise ServiceError(
                "IDEMPOTENCY_CONFLICT",
                "this Idempotency-Key was already used with a different request body",
                field="Idempotency-Key",
            )
        if state == "pending":
            raise ServiceError(
                "IDEMPOTENCY_IN_PROGRESS",
                "a request with this Idempotency-Key is still being processed; retry shortly",
                field="Idempotency-Key",
                retry_after_s=1,
            )
        return job_id

    def _check_prompt(self, prompt: str) -> None:
        limit = self.max_prompt_chars
        if len(prompt or "") > limit:
            raise ServiceError(
                "INVALID_PARAMETERS", f"prompt has {len(prompt)} characters, at most {limit}", field="prompt"
            )

    def _check_budget_and_rate(self, owner: str, record) -> None:
        if record is None:
            return
        balance = self.balance(owner)
        if balance is not None and balance <= 0:
            raise ServiceError("INSUFFICIENT_BALANCE", "the budget of this API key is spent")
        if record.rate_per_min:
            wait = self.store.rate_hit(f"jobs:{owner}", record.rate_per_min, RATE_WINDOW_S)
            if wait:
                raise ServiceError(
                    "RATE_LIMITED",
                    f"this API key may create {record.rate_per_min} jobs per minute",
                    retry_after_s=wait,
                )

    @contextmanager
    def _queue_slot(self, owner: str, concurrency: int | None) -> Iterator[None]:
        # One lock around both checks and the reservation: two racing requests cannot both take
        # the last slot of the queue or of the key's concurrency.
        with self._lock:
            if concurrency and self.store.active_count(owner) + self._reserved_by[owner] >= concurrency:
                raise ServiceError(
                    "CONCURRENCY_LIMITED",
                    f"this API key may have {concurrency} unfinished jobs at a time",
                    retry_after_s=self.settings.queue_full_retry_after_s,
                )
            queued = self.store.queued_count()
            if queued + self._reserved >= self.settings.max_queued_jobs:
                raise QueueFull(queued)
            self._reserved += 1
            self._reserved_by[owner] += 1
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= 1
                self._reserved_by[owner] -= 1


def _plain_413(limit: int) -> tuple[dict, bytes]:
    body = json.dumps(
        {
            "error": "Payload Too Large",
            "error_code": "PAYLOAD_TOO_LARGE",
            "message": f"the request body is over the {limit} byte limit",
        }
    ).encode()
    return {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }, body


def _flat_routes(routes: Sequence) -> Iterator:
    """The app's routes, looking into routers FastAPI keeps as included-router wrappers."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if inner is not None and getattr(context, "prefix", "") == "":
            yield from _flat_routes(inner.routes)
        else:
            yield route


class RequestGuard:
    """Pure ASGI middleware: refuses bodies over ``max_bytes`` (by Content-Length before reading a
    byte, else by counting while the app reads)."""

    def __init__(self, app: ASGIApp, max_bytes: int, routes: Sequence = ()):
        self.app = app
        self.max_bytes = max_bytes
        # the application's routes: a contract route answers the 413 in its own error shape
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"content-length")
        declared = next(lengths, "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"read": 0, "over": False, "started": False, "swallow": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_bytes:
                    state["over"] = True
                    raise ServiceError(
                        "PAYLOAD_TOO_LARGE", f"the request body is over the {self.max_bytes} byte limit"
                    )
            return message

        async def checked_send(message: Message) -> None:
            # After an overflow only a 413 the contract rendered itself goes out; anything else the
            # app made of the interrupted read (a 400/500) is replaced by ours.
            if message["type"] == "http.response.start" and state["over"] and message["status"] != 413:
                state["swallow"] = True
            if state["swallow"]:
                return
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, checked_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        for route in _flat_routes(self.routes):
            render = getattr(route, "error_renderer", None)
            if render is not None and route.matches(scope)[0] == Match.FULL:
                error = ServiceError(
                    "PAYLOAD_TOO_LARGE", f"the request body is over the {self.max_bytes} byte limit"
                )
                await render(error)(scope, receive, send)
                return
        start, body = _plain_413(self.max_bytes)
        await send(start)
        await send({"type": "http.response.body", "body": body})
