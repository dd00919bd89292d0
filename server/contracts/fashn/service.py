"""FASHN semantics on top of the core: ``/v1/run`` inputs -> EditJob, JobRecord -> prediction status."""

from __future__ import annotations

import base64
from collections.abc import Callable

from fastapi.responses import JSONResponse

from pipelines.spec import EditParams

from ...core import NamedInput
from ...errors import ServiceError
from ...fetch import check_callback_url
from ...jobs import JobMeta, JobRecord, JobStatus
from ..base import ContractService
from .protocol import FashnErrorBody, FashnStatusResponse, PredictionError, RunRequest, RunResponse

CONTRACT = "fashn"
# generation_mode -> Lightning steps (None = the full model with its default steps)
LIGHTNING_STEPS = {"fast": 4, "balanced": 8, "quality": None}
_STATUS = {
    JobStatus.QUEUED: "in_queue",
    JobStatus.PROCESSING: "processing",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "canceled",
}
# failure_reason_code -> the error name the FASHN client knows (anything else: PipelineError)
_FAILURE_NAMES = {
    "INVALID_IMAGE": "ImageLoadError",
    "IMAGE_TOO_LARGE": "ImageLoadError",
    "INPUT_FETCH_FAILED": "ImageLoadError",
    "INPUT_EXPIRED": "ImageLoadError",
    "INPUT_URL_BLOCKED": "ImageLoadError",
    "INVALID_PARAMETERS": "InputValidationError",
    "UNSUPPORTED_PARAMETER": "InputValidationError",
    "WORKER_LOST": "InternalServerError",
    "INTERNAL_ERROR": "InternalServerError",
}
# API-level errors (no prediction was created): FASHN's documented names. Budgets and queue
# limits are FASHN's 429s; everything the client got wrong is a 400.
_HTTP_ERRORS = {
    "UNAUTHORIZED": (401, "UnauthorizedAccess"),
    "NOT_FOUND": (404, "NotFound"),
    "INSUFFICIENT_BALANCE": (429, "OutOfCredits"),
    "CONCURRENCY_LIMITED": (429, "ConcurrencyLimitExceeded"),
    "RATE_LIMITED": (429, "RateLimitExceeded"),
}


def render_error(exc: ServiceError) -> JSONResponse:
    status, name = _HTTP_ERRORS.get(exc.code, (None, None))
    if status is None:
        if exc.http_status >= 500:
            status, name = exc.http_status, "InternalServerError"
        elif exc.http_status == 403:
            status, name = 403, "Forbidden"
        elif exc.http_status == 409:  # Idempotency-Key reused or still in progress
            status, name = 409, "Conflict"
        elif exc.http_status == 429:
            status, name = 429, "RateLimitExceeded"
        else:
            status, name = 400, "BadRequest"
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None or status == 429:
        headers["Retry-After"] = str(exc.retry_after_s or 1)
    if status in (409, 429) and not exc.retryable:
        # The official client retries 409s and 429s by itself; a spent budget or a reused
        # Idempotency-Key does not come right by waiting.
        headers["x-should-retry"] = "false"
    body = FashnErrorBody(error=name, message=exc.message)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


class FashnService(ContractService):
    name = CONTRACT
    noun = "prediction"

    def webhook_body(self, record: JobRecord) -> dict:
        # what the status endpoint shows; sending it never deletes inline results
        return self.render_status(record).model_dump(exclude={"webhook"})

    def after_webhook(self, record: JobRecord) -> None:
        # return_base64: the webhook carried the pictures, so nothing is kept after it is delivered
        if record.meta.inline_results and record.status == JobStatus.COMPLETED:
            self.core.inputs.drop_results(record)

    def submit(self, req: RunRequest, owner: str, idempotency_key: str | None = None) -> RunResponse:
        inputs = req.inputs
        if req.webhook_url is not None:  # the policy of input URLs, told now rather than never
            check_callback_url(req.webhook_url, self.core.inputs.fetch_policy, "webhook_url")
        params = EditParams(
            prompt=inputs.prompt,
            lightning_steps=LIGHTNING_STEPS[inputs.generation_mode],
            resolution=inputs.resolution,
            aspect_ratio=inputs.aspect_ratio,
            num_images=inputs.num_images,
            seed=inputs.seed,
            output_format=inputs.output_format,
        )
        meta = JobMeta(
            contract=CONTRACT,
            owner=owner,
            callback_url=req.webhook_url,
            inline_results=inputs.return_base64,
            options={"model_name": req.model_name, "generation_mode": inputs.generation_mode},
        )
        references = (
            [NamedInput(inputs.image_context, "inputs.image_context", "context image")]
            if inputs.image_context
            else []
        )
        mask = NamedInput(inputs.mask, "inputs.mask") if inputs.mask else None
        record = self.core.submit(
            params,
            [inputs.image],
            meta,
            image_field="inputs.image",
            references=references,
            mask=mask,
            idempotency_key=idempotency_key,
        )
        return RunResponse(id=record.id)

    def status(self, prediction_id: str, owner: str) -> tuple[FashnStatusResponse, Callable[[], None] | None]:
        """The status body, and what to do once it has been sent (drop inline results)."""
        record = self.own_job(prediction_id, owner)
        # Only the status endpoint says how the webhook went; the webhook's own body does not.
        body = self.render_status(record)
        body = body.model_copy(update={"webhook": self.core.webhook_state(record)})
        if record.meta.inline_results and body.output:
            return body, lambda: self.core.inputs.drop_results(record)
        return body, None

    def render_status(self, record: JobRecord) -> FashnStatusResponse:
        status = _STATUS[record.status]
        if record.status == JobStatus.COMPLETED:
            return FashnStatusResponse(id=record.id, status=status, output=self._outputs(record))
        if record.status == JobStatus.FAILED:
            code = record.failure_reason_code or "INTERNAL_ERROR"
            name = _FAILURE_NAMES.get(code, "PipelineError")
            error = PredictionError(name=name, message=record.error or "the edit failed")
            return FashnStatusResponse(
                id=record.id, status="time_out" if code == "JOB_TIMEOUT" else status, error=error
            )
        return FashnStatusResponse(id=record.id, status=status)

    def _outputs(self, record: JobRecord) -> list[str]:
        if not record.meta.inline_results:
            return self.core.inputs.result_urls(record)
        # Handed out once and then deleted (see status): a later poll gets an empty output list.
        pictures = self.core.inputs.result_bytes(record) or []
        return [
            f"data:{r.mime_type};base64,{base64.b64encode(data).decode()}"
            for r, data in zip(record.results, pictures, strict=False)
        ]
