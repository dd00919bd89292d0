"""The contract-agnostic core: validate once, store inputs, queue, report.

Contracts translate their requests into calls on ``Core`` (jobs, keys, money) and ``Core.inputs``
(server/inputs.py: uploads, input URLs, results) and render ``JobRecord``s back; they never touch
the store or the files directly, so new contracts plug in without changing this.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.cost_model import job_work
from pipelines.errors import EngineError
from pipelines.images import decode_image, decode_mask
from pipelines.memory_limits import check_planned_side
from pipelines.registry import Registry
from pipelines.spec import EditParams
from pipelines.validation import check_counts, check_params

from . import memory_report
from .accounting import Accounting
from .auth import KeyRing, KeysFile, parse_env_keys
from .errors import ServiceError
from .eta import SWAP_SECONDS
from .files import FileStore
from .inputs import Inputs, new_id
from .job_events import JobEvents
from .jobs import EditJob, InputRef, JobMeta, JobRecord, WebhookState
from .limits import Admission
from .settings import Settings
from .storage import StorageGuard
from .store import JobStore, Profile
from .webhooks import webhook_state

if TYPE_CHECKING:
    from .pods import PodAgent

log = logging.getLogger("retouch.core")


@dataclass(frozen=True)
class NamedInput:
    """A side input picture (reference or mask) by URL, with the request field errors name."""

    url: str
    field: str
    description: str | None = None


class Core:
    """The job desk: who is asking (keys, money), jobs in (validated once, inputs stored, queued)
    and jobs out (status, cancel, lists, webhooks' state); files live in ``inputs``."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: JobStore,
        files: FileStore,
        *,
        pods: PodAgent | None = None,
        events: JobEvents | None = None,
        on_queued: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.registry = registry
        self.store = store
        # which pods are alive and what their memory plans fit; None = this server only
        self.pods = pods
        # wakes requests waiting for a job (server/job_events.py)
        self.events = events or JobEvents(settings)
        # an idle worker starts a queued job now rather than at its next poll
        self.on_queued = on_queued
        self.keys = KeyRing(
            KeysFile(settings.keys_path), parse_env_keys(settings.api_keys, settings.key_budgets_usd)
        )
        self.accounting = Accounting(settings, store, self.keys)
        self.admission = Admission(
            settings, store, self.keys, self.balance, max_prompt_chars=registry.limits.max_prompt_chars
        )
        # Free-space floor of the data disk: nothing is written below it (server/storage.py).
        self.storage = StorageGuard(settings)
        self.inputs = Inputs(settings, registry, store, files, self.storage)

    # -- auth and money ----------------------------------------------------------------------
    def authenticate(self, api_key: str | None, scope: str = "edit") -> str:
        """The owner id (a hash, so keys are never stored) of an accepted key.

        ``api_key`` is what the contract's own header carried; without one, ``Authorization: Bearer``
        or ``X-API-Key`` of the current request is used. 401 unknown/missing, 403 missing scope."""
        return self.keys.authenticate(api_key, scope)

    def balance(self, owner: str) -> float | None:
        """What is left of the key's budget (server/accounting.py); None for keys without one."""
        return self.accounting.balance(owner)

    def cost_usd(self, record: JobRecord) -> float | None:
        """What the job was charged when it ended (stored then: later price changes do not touch it)."""
        return record.cost_usd

    # -- inputs ------------------------------------------------------------------------------
    # -- jobs --------------------------------------------------------------------------------
    def submit(
        self,
        params: EditParams,
        image_urls: list[str],
        meta: JobMeta,
        *,
        idempotency_key: str | None = None,
        **inputs: Any,
    ) -> JobRecord:
        """Admit (server/limits.py: Idempotency-Key, caps, key limits, a reserved queue slot), then
        validate and queue; nothing is fetched or decoded before the slot is reserved."""
        body = {"params": dataclasses.asdict(params), "images": image_urls, "contract": meta.contract}
        body |= {"inputs": inputs, "callback_url": meta.callback_url, "profile_id": meta.profile_id}
        self.storage.check()  # before admission: an Idempotency-Key record is a write too
        with self.admission.admit(meta.owner, params.prompt or "", body, idempotency_key) as ticket:
            if ticket.existing_job_id is not None:
                return self.get_job(ticket.existing_job_id, meta.owner)
            record = self._submit_admitted(params, image_urls, meta, **inputs)
            ticket.job_id = record.id
            return record

    def _submit_admitted(
        self,
        params: EditParams,
        image_urls: list[str],
        meta: JobMeta,
        *,
        image_field: str = "input_image",
        references: Sequence[NamedInput] = (),
        mask: NamedInput | None = None,
    ) -> JobRecord:
        """Validate a job once (params, then the pictures), store its inputs, queue it; the worker
        trusts this and re-checks only what needs the decoded pictures.

        ``references`` are context pictures with optional descriptions; ``mask`` (white = edit)
        must have the size of the first image."""
        if not image_urls:
            raise ServiceError("INVALID_PARAMETERS", f"{image_field} is required", field=image_field)
        try:  # before anything is fetched: counts and knobs need no picture
            warnings = check_counts(params, len(image_urls), len(references), self.registry)
            warnings = check_params(params, self.registry, masked=mask is not None) + warnings
        except EngineError as exc:
            if exc.field != "images":
                raise ServiceError.from_engine(exc) from None
            # The engine's generic "images" is the contract's own field to its client.
            raise ServiceError(exc.code, f"{image_field}: {exc.message}", field=image_field) from None
        names = [
            image_field if len(image_urls) == 1 else f"{image_field}[{i}]" for i in range(len(image_urls))
        ]
        pictures = [self.inputs.read_input(url, name) for url, name in zip(image_urls, names, strict=True)]
        side = [(r, self.inputs.read_input(r.url, r.field)) for r in references]
        mask_bytes = self.inputs.read_input(mask.url, mask.field) if mask else None
        cap = self.registry.limits.max_input_pixels
        try:
            sizes = [
                decode_image(d, max_pixels=cap, what=n).size for d, n in zip(pictures, names, strict=True)
            ]
            side_sizes = [decode_image(data, max_pixels=cap, what=ref.field).size for ref, data in side]
        except EngineError as exc:
            raise ServiceError.from_engine(exc) from None
        if mask is not None:
            try:
                decode_mask(mask_bytes, sizes[0], max_pixels=cap)
            except EngineError as exc:
                # The engine names the field "mask"; the contract's own name is clearer to its client.
                message = exc.message.replace("mask", mask.field, 1)
                raise ServiceError(exc.code, message, field=mask.field) from None

        job_id = new_id("job")
        refs = [InputRef(path=f"inputs/{job_id}/{i}") for i in range(len(pictures))]
        preloaded = {f"inputs/{job_id}/ref{i}": data for i, (_, data) in enumerate(side)}
        if mask_bytes is not None:
            preloaded[f"inputs/{job_id}/mask"] = mask_bytes
        job = EditJob(
            params=params,
            images=refs,
            references=[
                InputRef(path=f"inputs/{job_id}/ref{i}", description=r.description)
                for i, (r, _) in enumerate(side)
            ],
            mask=InputRef(path=f"inputs/{job_id}/mask") if mask_bytes is not None else None,
        )
        masked = mask_bytes is not None
        model = self._job_model(params, meta.server_id)
        try:
            planned_side = (
                self.pods.largest_side(meta.server_id, model)
                if self.pods is not None
                else memory_report.largest_side(self.settings, model)
            )
            if planned_side is not None:
                check_planned_side(params, self.registry, sizes[0], planned_side, masked=masked)
            work = job_work(params, self.registry, sizes, side_sizes, masked=masked)
            swap = self.pods.swap_seconds(model, meta.server_id) if self.pods is not None else 0.0
            if work and swap > 0:
                work[SWAP_SECONDS] = swap  # not a rate to fit: a measured wait (server/eta.py)
        except EngineError as exc:
            raise ServiceError.from_engine(exc) from None
        meta = meta.model_copy(update={"warnings": meta.warnings + warnings, "model": model, "work": work})
        try:
            with self.storage.full_disk_refused():  # filled since the floor was checked
                for ref, data in zip(refs, pictures, strict=True):
                    self.inputs.files.write(ref.path, data)
                for path, data in preloaded.items():
                    self.inputs.files.write(path, data)
                record = self.store.add_job(
                    job_id,
                    job,
                    meta,
                    max_queued=self.settings.max_queued_jobs,
                    budget_usd=self.accounting.budget(meta.owner),
                    reserve_usd=self.accounting.reserve_usd(work),
                )
        except Exception:
            self.inputs.files.delete_tree(f"inputs/{job_id}")
            raise
        log.info("job queued", extra={"job_id": job_id, "contract": meta.contract, "kind": record.kind})
        if self.on_queued is not None:
            self.on_queued()
        return record

    def check_server_id(self, server_id: str | None) -> None:
        """A job may name a pod (``server_id``); an unknown or dead one is refused before queueing."""
        if server_id is None:
            return
        if self.pods is not None:
            self.pods.check_server_id(server_id)
        elif server_id != self.settings.server_id:
            raise ServiceError(
                "WRONG_SERVER",
                f"server_id {server_id!r} is not this server ({self.settings.server_id!r})",
                field="server_id",
            )

    def _job_model(self, params: EditParams, server_id: str | None) -> str:
        """The edit model the job runs on, held by a live pod (or the pinned one); unpinned jobs
        queue per model (Redis store), so any pod holding it takes them."""
        model = self.registry.edit_model(params.model)[0]
        if self.pods is not None:
            self.pods.check_holder(model, server_id)
        return model

    def get_job(self, job_id: str, owner: str) -> JobRecord:
        record = self.store.get_job(job_id)
        if record is None or record.meta.owner != owner:
            raise ServiceError("NOT_FOUND", f"job {job_id!r} not found")
        return record

    def cancel(self, job_id: str, owner: str) -> JobRecord:
        self.get_job(job_id, owner)
        record = self.store.cancel(job_id)
        if record is None:
            raise ServiceError("NOT_FOUND", f"job {job_id!r} not found")
        self.events.publish(job_id)
        return record

    def find_job(self, job_id: str) -> JobRecord | None:
        """Any key's job: for URLs whose signature stands in for the key (Depicta's variants)."""
        return self.store.get_job(job_id)

    def webhook_state(self, record: JobRecord) -> WebhookState | None:
        return webhook_state(self.store, record)

    # -- profiles (imagepipeline's saved settings) -------------------------------------------
    def add_profile(self, profile: Profile) -> None:
        self.store.add_profile(profile)

    def profile(self, profile_id: str, owner: str) -> Profile:
        found = self.store.get_profile(profile_id)
        if found is None or found.owner != owner:
            raise ServiceError("NOT_FOUND", f"profile {profile_id!r} not found", field="profile_id")
        return found

    def list_profiles(self, owner: str) -> list[Profile]:
        return self.store.list_profiles(owner)

    def delete_profile(self, profile_id: str, owner: str) -> None:
        self.profile(profile_id, owner)
        self.store.delete_profile(profile_id)

    def list_jobs(self, owner: str, contract: str, limit: int = 50) -> list[JobRecord]:
        return self.store.list_jobs(owner, contract=contract, limit=limit)

    def estimate_new(self, record: JobRecord) -> float:
        """ETA of a job like ``record`` if it were queued now, behind everything queued and running."""
        return self.store.estimate_new(record.meta.work)

    # -- files -------------------------------------------------------------------------------
    def ready(self) -> bool:
        return bool(self.store.ready_workers(max_age_s=max(10.0, self.settings.lease_s)))
