"""What every contract shares, written once (as vLLM's ``OpenAIServing`` is for its API families).

A contract package is ``protocol.py`` (its wire types), ``service.py`` (a ``ContractService``:
request -> job, job -> its own bodies) and ``router.py`` (thin FastAPI routes), and it declares
one ``Contract`` value in its ``__init__``. ``server/app.py`` iterates ``CONTRACTS``: it builds
each service, includes its router and hands the webhook sender each service's body and
after-delivery hook. Everything contracts do alike lives here: whose job it is, waiting for a job
to end (on the job-change signal of ``server/job_events.py``, not by polling), and a failed job
as an error.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipelines.registry import PublicModel

from ..core import Core
from ..errors import ServiceError
from ..job_events import RECHECK_S
from ..jobs import JobRecord


class ClientGone(Exception):
    """The client disconnected before its job ended; ``record`` is the job as last read."""

    def __init__(self, record: JobRecord):
        super().__init__(record.id)
        self.record = record


class WaitedTooLong(ClientGone):
    """The job did not end within the wait the contract allows."""


class ContractService:
    """A contract's service: subclasses set ``name`` and render their own bodies."""

    name: ClassVar[str]
    # what the contract calls a job in its errors ("prediction" for FASHN)
    noun: ClassVar[str] = "job"

    def __init__(self, core: Core):
        self.core = core

    def own_job(self, job_id: str, owner: str) -> JobRecord:
        """The caller's job, submitted through this contract; anything else is not found (each
        contract answers for its own jobs only, and nobody learns another key's job ids)."""
        record = self.core.get_job(job_id, owner)
        if record.meta.contract != self.name:
            raise ServiceError("NOT_FOUND", f"{self.noun} {job_id!r} not found")
        return record

    async def wait_for_end(self, record: JobRecord, request: Request | None, timeout_s: float) -> JobRecord:
        """The job once it has ended. Raises ``ClientGone`` when the client disconnects first and
        ``WaitedTooLong`` past ``timeout_s``; the contract decides what either means for the job."""
        deadline = time.monotonic() + timeout_s
        async with self.core.events.watch(record.id) as watch:
            # read after watching: a change in between wakes the first wait at once
            record = await run_in_threadpool(self.core.get_job, record.id, record.meta.owner)
            while not record.status.is_terminal():
                if request is not None and await request.is_disconnected():
                    raise ClientGone(record)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitedTooLong(record)
                await watch.wait(min(RECHECK_S, left))
                record = await run_in_threadpool(self.core.get_job, record.id, record.meta.owner)
        return record

    def public_models(self) -> dict[str, PublicModel]:
        """The model names clients may send (weights.yaml public_models; ``qwen-image-edit`` and
        ``-pe`` for the default edit model where the table is not set)."""
        registry = self.core.registry
        if registry.public_models:
            return dict(registry.public_models)
        if not registry.edit_models():
            return {}
        default = registry.edit_model(None)[0]
        fallback = {"qwen-image-edit": False, "qwen-image-edit-pe": True}
        return {name: PublicModel(model=default, enhance_prompt=pe) for name, pe in fallback.items()}

    def resolve_model(self, name: str | None, *, enhancing: bool = True) -> PublicModel | None:
        """The edit model a request's ``model`` names (None: the default); a 4xx listing the names.
        ``enhancing=False`` for contracts that send the prompt as written (no ``-pe`` names)."""
        if name is None:
            return None
        choices = {n: m for n, m in self.public_models().items() if enhancing or not m.enhance_prompt}
        if name not in choices:
            have = ", ".join(sorted(choices)) or "none"
            raise ServiceError(
                "INVALID_PARAMETERS", f"model {name!r} is not available (have: {have})", field="model"
            )
        return choices[name]

    @staticmethod
    def failure(record: JobRecord) -> ServiceError:
        """A failed job as the error its request would have met."""
        return ServiceError(record.failure_reason_code or "INTERNAL_ERROR", record.error or "the edit failed")

    def webhook_body(self, record: JobRecord) -> dict:
        """What a webhook for this job carries; contracts with a status endpoint send its body."""
        return {"id": record.id, "status": record.status.value, "error": record.error}

    def after_webhook(self, record: JobRecord) -> None:
        """Run once the job's terminal webhook was delivered (e.g. drop results sent inline)."""


@dataclass(frozen=True)
class Contract:
    """A contract package as ``server/app.py`` sees it."""

    name: str
    service: Callable[[Core], ContractService]
    router: Callable[[ContractService], APIRouter]


def discover() -> list[Contract]:
    """Every package under server/contracts/ that declares a ``CONTRACT``: a new contract is a
    folder, nothing else to register."""
    package = Path(__file__).parent
    found = []
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"{__package__}.{info.name}")
            contract = getattr(module, "CONTRACT", None)
            if isinstance(contract, Contract):
                found.append(contract)
    return found
