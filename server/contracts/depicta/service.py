"""Depicta semantics on top of the core: a synchronous edit (queue, wait, answer), signed per-format
result URLs with hashes, and the job list a client recovers lost responses from."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from threading import Lock
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse

from pipelines.errors import EngineError
from pipelines.images import decode_image, encode_image, sha256_hex
from pipelines.mime import MIME_TYPES as MIME
from pipelines.spec import EditParams

from ... import signing
from ...core import Core, NamedInput
from ...errors import ServiceError
from ...jobs import JobMeta, JobRecord, JobStatus
from ..base import ClientGone, ContractService, WaitedTooLong
from .protocol import (
    DepictaErrorBody,
    DepictaUploadResponse,
    EditRequest,
    FormatVariant,
    GenerationResponse,
    JobDetail,
    JobList,
    JobSummary,
)

CONTRACT = "depicta"
URL_TTL_S = 3600  # Depicta's signed URLs expire after one hour
_CODES = {
    400: "bad_request",
    401: "authentication_error",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    410: "expired",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    451: "content_rejected",
    503: "service_unavailable",
}


def render_error(exc: ServiceError) -> JSONResponse:
    details = {exc.field: exc.message} if exc.field and exc.http_status == 422 else None
    body = DepictaErrorBody(
        error=_CODES.get(exc.http_status, "internal_error"), message=exc.message, details=details
    )
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None or exc.http_status == 429:
        headers["Retry-After"] = str(exc.retry_after_s or 1)
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=exc.http_status, headers=headers or None
    )


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _VariantCache:
    """Recent JPEG/WebP encodings, so the bytes a URL serves are the bytes the body hashed
    without encoding twice (encodings are deterministic, so a miss re-creates the same file)."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = Lock()

    def get(self, png: bytes, png_sha256: str, fmt: str) -> bytes:
        key = (png_sha256, fmt)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        # The engine already marked the PNG as AI-generated; the re-encoding carries the mark too.
        data = encode_image(
            decode_image(png, max_pixels=2**31), fmt, quality=90, extra_xmp={"derivedFromSha256": png_sha256}
        )
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return data


class DepictaService(ContractService):
    name = CONTRACT

    def __init__(self, core: Core):
        super().__init__(core)
        self.variants = _VariantCache()

    # -- models ------------------------------------------------------------------------------
    def _default_model(self) -> str:
        """The name Depicta reports for a job that named none: the first public name of the
        default model (prompt-enhancing aliases are the OpenAI contract's)."""
        default = self.core.registry.edit_model(None)[0]
        names = [n for n, m in self.public_models().items() if m.model == default and not m.enhance_prompt]
        return next((n for n in names if n != default), default)

    # -- uploads -----------------------------------------------------------------------------
    def upload(self, data: bytes, filename: str | None, owner: str) -> DepictaUploadResponse:
        upload, url = self.core.inputs.save_upload(data, filename, owner)
        return DepictaUploadResponse(
            upload_url=url,
            filename=upload.filename,
            content_type=upload.content_type,
            size_bytes=upload.size_bytes,
            expires_at=iso(upload.expires_at),
        )

    # -- edits -------------------------------------------------------------------------------
    def submit(self, req: EditRequest, owner: str, idempotency_key: str | None = None) -> JobRecord:
        model = req.model or self._default_model()
        chosen = self.resolve_model(model, enhancing=False)
        params = EditParams(
            prompt=req.prompt,
            model=chosen.model,
            aspect_ratio=req.aspect_ratio,
            resolution=req.image_size.lower() if req.image_size else None,
            seed=-1,
            # PNG is the master every other format is derived from (and image_hash is its hash).
            output_format="png",
        )
        meta = JobMeta(
            contract=CONTRACT,
            owner=owner,
            # No moderation model is configured: strictness is recorded, not enforced.
            options={"model": model, "strictness": req.strictness},
        )
        references = [
            NamedInput(ref.url, f"reference_images[{i}].url", ref.description)
            for i, ref in enumerate(req.reference_images)
        ]
        return self.core.submit(
            params,
            [req.input_image_url],
            meta,
            image_field="input_image_url",
            references=references,
            idempotency_key=idempotency_key,
        )

    async def wait(self, record: JobRecord, request: Request) -> JobRecord:
        """The job once it ended; the worker runs it in another process."""
        limits = self.core.registry.limits
        budget = limits.job_timeout_s * self.core.settings.max_attempts + (record.estimated_seconds or 0) + 30
        try:
            return await self.wait_for_end(record, request, budget)
        except WaitedTooLong:
            raise ServiceError(
                "NOT_READY",
                f"job {record.id} is still running; fetch it later from GET /v1/jobs/{record.id}",
                retry_after_s=10,
            ) from None
        except ClientGone:
            # The job goes on; its client recovers the result from GET /v1/jobs/{id}.
            raise ServiceError("NOT_READY", "the client went away") from None

    def generation(self, record: JobRecord) -> GenerationResponse:
        """The answer to an edit that ended; a failed one raises its error."""
        if record.status == JobStatus.FAILED:
            raise ServiceError(
                record.failure_reason_code or "INTERNAL_ERROR", record.error or "the edit failed"
            )
        if record.status == JobStatus.CANCELLED:
            raise ServiceError("CONFLICT", f"job {record.id} was cancelled")
        if record.status != JobStatus.COMPLETED:
            raise ServiceError("NOT_READY", f"job {record.id} is {record.status.value}", retry_after_s=5)
        pictures = self.core.inputs.result_bytes(record)
        if not pictures:
            raise ServiceError("URL_EXPIRED", f"the result of job {record.id} has expired and was removed")
        png, result = pictures[0], record.results[0]
        formats = {"png": self._variant(self.core.inputs.signed_url("/files/" + result.path, URL_TTL_S), png)}
        for fmt in ("jpeg", "webp"):
            data = self.variants.get(png, result.sha256, fmt)
            url = self.core.inputs.signed_url(f"/v1/jobs/{record.id}/images/0.{fmt}", URL_TTL_S)
            formats[fmt] = self._variant(url, data, fmt)
        balance = self.core.balance(record.meta.owner)
        rate = self.core.settings.eur_per_usd
        return GenerationResponse(
            id=record.id,
            formats=formats,
            image_url=formats["png"].url,
            image_hash=formats["png"].hash,
            expires_at=formats["png"].expires_at,
            model=str(record.meta.options.get("model") or self._default_model()),
            # The server accounts in USD (price_per_gpu_hour_usd, budgets); Depicta speaks EUR.
            cost_eur=f"{(self.core.cost_usd(record) or 0.0) * rate:.4f}",
            balance_eur=f"{balance * rate:.4f}" if balance is not None else None,
            warnings=record.warnings,
        )

    @staticmethod
    def _variant(url: str, data: bytes, fmt: str = "png") -> FormatVariant:
        expires = int(parse_qs(urlsplit(url).query)["expires"][0])
        return FormatVariant(
            url=url, format=fmt, size_bytes=len(data), hash=sha256_hex(data), expires_at=iso(expires)
        )

    def variant_file(self, job_id: str, name: str, expires: str | None, sig: str | None) -> tuple[bytes, str]:
        """A signed JPEG/WebP variant URL's bytes (the signature stands in for the API key)."""
        signing.verify(self.core.settings.signing_secret, f"/v1/jobs/{job_id}/images/{name}", expires, sig)
        index, _, fmt = name.partition(".")
        record = self.core.find_job(job_id)
        if record is None or fmt not in ("jpeg", "webp") or index != "0":
            raise ServiceError("NOT_FOUND", "this file does not exist")
        pictures = self.core.inputs.result_bytes(record)
        if not pictures:
            raise ServiceError("NOT_FOUND", "this file has expired or does not exist")
        try:
            return self.variants.get(pictures[0], record.results[0].sha256, fmt), MIME[fmt]
        except EngineError as exc:
            raise ServiceError.from_engine(exc) from None

    # -- jobs --------------------------------------------------------------------------------
    def _summary(self, record: JobRecord) -> dict:
        error = None
        if record.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            code = "CONFLICT" if record.status == JobStatus.CANCELLED else record.failure_reason_code
            rendered = ServiceError(code or "INTERNAL_ERROR", record.error or "the edit failed")
            error = DepictaErrorBody(
                error=_CODES.get(rendered.http_status, "internal_error"), message=rendered.message
            )
        return dict(
            job_id=record.id,
            status=record.status.value,
            model=record.meta.options.get("model"),
            strictness=record.meta.options.get("strictness"),
            created_at=iso(record.created_at),
            completed_at=iso(record.finished_at) if record.finished_at else None,
            error=error,
        )

    def list_jobs(self, owner: str, limit: int) -> JobList:
        generations = []
        for record in self.core.list_jobs(owner, CONTRACT, limit):
            summary = JobSummary(**self._summary(record))
            if record.status == JobStatus.COMPLETED and record.results:
                summary.image_url = self.core.inputs.signed_url("/files/" + record.results[0].path, URL_TTL_S)
            generations.append(summary)
        return JobList(generations=generations)

    def job_detail(self, job_id: str, owner: str) -> JobDetail:
        record = self.own_job(job_id, owner)
        detail = JobDetail(**self._summary(record))
        if record.status == JobStatus.COMPLETED and self.core.inputs.result_bytes(record):
            result = self.generation(record)
            detail = detail.model_copy(
                update={
                    "result": result,
                    "formats": result.formats,
                    "image_url": result.image_url,
                    "image_hash": result.image_hash,
                    "cost_eur": result.cost_eur,
                    "balance_eur": result.balance_eur,
                    "ai_generated": True,
                }
            )
        return detail
