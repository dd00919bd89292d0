"""The contract-agnostic core: validate once, store inputs, queue, report, serve files.

Contracts translate their requests into calls on ``Core`` and render ``JobRecord``s back; they
never touch the store or the files directly, so new contracts plug in without changing this.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pipelines.cost_model import job_work
from pipelines.errors import EngineError
from pipelines.images import decode_image, decode_mask
from pipelines.memory_limits import check_planned_side
from pipelines.registry import Registry
from pipelines.spec import EditParams
from pipelines.validation import check_counts, check_params

from . import memory_report, signing
from .accounting import Accounting
from .auth import KeyRing, KeysFile, parse_env_keys
from .errors import ServiceError
from .fetch import FetchPolicy, fetch_url
from .files import FileStore, safe_filename
from .jobs import EditJob, InputRef, JobMeta, JobRecord
from .limits import Admission
from .settings import Settings
from .storage import StorageGuard
from .store import JobStore, Upload

log = logging.getLogger("retouch.core")

UPLOAD_PREFIX = "/files/uploads/"
RESULT_PREFIX = "/files/results/"


@dataclass(frozen=True)
class NamedInput:
    """A side input picture (reference or mask) by URL, with the request field errors name."""

    url: str
    field: str
    description: str | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class Core:
    def __init__(self, settings: Settings, registry: Registry, store: JobStore, files: FileStore):
        self.settings = settings
        self.registry = registry
        self.store = store
        self.files = files
        # contract name -> function(JobRecord) -> dict; webhooks post what the status endpoint shows
        self.status_renderers: dict[str, Any] = {}
        # contract name -> function(JobRecord) run once its webhook was delivered (inline results)
        self.after_webhook: dict[str, Callable[[JobRecord], None]] = {}
        # Called after a job is queued, so an idle worker starts it now rather than at its next poll.
        self.on_queued: list[Callable[[], None]] = []
        self.keys = KeyRing(
            KeysFile(settings.keys_path), parse_env_keys(settings.api_keys, settings.key_budgets_usd)
        )
        self.accounting = Accounting(settings, store, self.keys)
        self.admission = Admission(
            settings, store, self.keys, self.balance, max_prompt_chars=registry.limits.max_prompt_chars
        )
        self.fetch_policy = FetchPolicy.from_settings(settings)
        # server/pods.py PodAgent: which pods are alive (set by create_app; None = this server only).
        self.pods = None
        # Free-space floor of the data disk: nothing is written below it (server/storage.py).
        self.storage = StorageGuard(settings)

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
    def read_input(self, url: str, what: str) -> bytes:
        """Bytes of an input named by URL; this server's own upload/result URLs are read from disk."""
        if not isinstance(url, str) or not url:
            raise ServiceError("INVALID_PARAMETERS", f"{what} must be a non-empty URL string", field=what)
        own = self._own_file(url, what)
        if own is not None:
            return self.files.read(own)
        return fetch_url(url, what=what, policy=self.fetch_policy)

    def _own_file(self, url: str, what: str) -> str | None:
        base = self.settings.base_url
        if not url.startswith(base + "/files/"):
            return None
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            signing.verify(
                self.settings.signing_secret,
                parts.path,
                query.get("expires", [None])[0],
                query.get("sig", [None])[0],
            )
        except ServiceError as exc:
            code = "INPUT_EXPIRED" if exc.code == "URL_EXPIRED" else "INVALID_PARAMETERS"
            raise ServiceError(code, f"{what}: {exc.message}", field=what) from None
        relative = parts.path.removeprefix("/files/")
        if parts.path.startswith(UPLOAD_PREFIX):
            upload = self.store.get_upload(parts.path.removeprefix(UPLOAD_PREFIX).split("/")[0])
            if upload is None or not self.files.exists(upload.path):
                raise ServiceError(
                    "INPUT_EXPIRED", f"{what}: this upload has expired or was removed", field=what
                )
            return upload.path
        if not parts.path.startswith(RESULT_PREFIX) or not self.files.exists(relative):
            raise ServiceError("INPUT_EXPIRED", f"{what}: this file has expired or was removed", field=what)
        return relative

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, params: EditParams, image_urls: list[str], meta: JobMeta, **inputs: Any) -> JobRecord:
        """Admit (server/limits.py: Idempotency-Key, caps, key limits, a reserved queue slot), then
        validate and queue; nothing is fetched or decoded before the slot is reserved."""
        body = {"params": dataclasses.asdict(params), "images": image_urls, "contract": meta.contract}
        body |= {"inputs": inputs, "callback_url": meta.callback_url, "profile_id": meta.profile_id}
        self.storage.check()  # before admission: an Idempotency-Key record is a write too
        with self.admission.admit(meta.owner, params.prompt or "", body) as ticket:
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
        pictures = [self.read_input(url, name) for url, name in zip(image_urls, names, strict=True)]
        side = [(r, self.read_input(r.url, r.field)) for r in references]
        mask_bytes = self.read_input(mask.url, mask.field) if mask else None
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
        try:
            planned_side = (
                self.pods.largest_side(meta.server_id)
                if self.pods is not None
                else memory_report.largest_side(self.settings)
            )
            if planned_side is not None:
                check_planned_side(params, self.registry, sizes[0], planned_side, masked=masked)
            work = job_work(params, self.registry, sizes, side_sizes, masked=masked)
        except EngineError as exc:
            raise ServiceError.from_engine(exc) from None
        meta = meta.model_copy(
            update={"warnings": meta.warnings + warnings, "model": self._job_model(), "work": work}
        )
        try:
            with self.storage.full_disk_refused():  # filled since the floor was checked
                for ref, data in zip(refs, pictures, strict=True):
                    self.files.write(ref.path, data)
                for path, data in preloaded.items():
                    self.files.write(path, data)
                record = self.store.add_job(
                    job_id,
                    job,
                    meta,
                    max_queued=self.settings.max_queued_jobs,
                    budget_usd=self.accounting.budget(meta.owner),
                    reserve_usd=self.accounting.reserve_usd(work),
                )
        except Exception:
            self.files.delete_tree(f"inputs/{job_id}")
            raise
        log.info("job queued", extra={"job_id": job_id, "contract": meta.contract, "kind": record.kind})
        for wake in self.on_queued:
            wake()
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

    def _job_model(self) -> str | None:
        """The registry model that runs edit jobs; unpinned jobs queue per model (Redis store)."""
        found = self.registry.model_for("edit_plus") or self.registry.model_for("edit")
        return found[0] if found else None

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
        return record

    def list_jobs(self, owner: str, contract: str, limit: int = 50) -> list[JobRecord]:
        return self.store.list_jobs(owner, contract=contract, limit=limit)

    def result_bytes(self, record: JobRecord) -> list[bytes] | None:
        """The result pictures' bytes; None once any of them has expired or was handed out."""
        paths = [r.path for r in record.results]
        if not paths or not all(self.files.exists(p) for p in paths):
            return None
        return [self.files.read(p) for p in paths]

    def drop_results(self, record: JobRecord) -> None:
        """Delete a job's result files now (results handed out inline are not kept)."""
        for result in record.results:
            self.files.delete(result.path)

    def estimate_new(self, record: JobRecord) -> float:
        """ETA of a job like ``record`` if it were queued now, behind everything queued and running."""
        return self.store.estimate_new(record.meta.work)

    # -- files -------------------------------------------------------------------------------
    def save_upload(self, data: bytes, filename: str | None, owner: str) -> tuple[Upload, str]:
        self.storage.check()
        if len(data) > self.settings.upload_max_bytes:
            raise ServiceError(
                "FILE_TOO_LARGE",
                f"file is over the {self.settings.upload_max_bytes} byte limit",
                field="file",
            )
        try:
            picture = decode_image(data, max_pixels=self.registry.limits.max_input_pixels, what="file")
        except EngineError as exc:
            raise ServiceError.from_engine(exc) from None
        del picture
        content_type = _sniff_mime(data)
        upload_id = new_id("up")
        name = safe_filename(filename)
        now = time.time()
        upload = Upload(
            id=upload_id,
            owner=owner,
            filename=name,
            content_type=content_type,
            size_bytes=len(data),
            path=f"uploads/{upload_id}/{name}",
            created_at=now,
            expires_at=now + self.settings.upload_ttl_s,
        )
        try:
            with self.storage.full_disk_refused():
                self.files.write(upload.path, data)
                self.store.add_upload(upload)
        except Exception:
            self.files.delete_tree(f"uploads/{upload_id}")
            raise
        return upload, self.signed_url(f"{UPLOAD_PREFIX}{upload_id}/{name}", self.settings.upload_ttl_s)

    def signed_url(self, path: str, ttl_s: float | None = None) -> str:
        ttl = ttl_s if ttl_s is not None else self.settings.signed_url_ttl_s
        return signing.sign(self.settings.signing_secret, self.settings.base_url, path, ttl)

    def result_urls(self, record: JobRecord) -> list[str]:
        return [self.signed_url("/files/" + r.path) for r in record.results]

    def ready(self) -> bool:
        return bool(self.store.ready_workers(max_age_s=max(10.0, self.settings.lease_s)))


def _sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"GIF8",):
        return "image/gif"
    return "application/octet-stream"
