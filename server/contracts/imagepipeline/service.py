"""imagepipeline.io semantics on top of the core: request -> EditJob, JobRecord -> status body."""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse

from pipelines.spec import EditParams

from ...core import NamedInput
from ...errors import ServiceError
from ...fetch import check_callback_url
from ...inputs import new_id
from ...jobs import JobMeta, JobRecord, JobStatus
from ...store import Profile
from ..base import ContractService
from .profiles import apply_profile, check_template
from .protocol import (
    EditRequest,
    ImagePipelineErrorBody,
    ProfileList,
    ProfileRequest,
    ProfileResponse,
    StatusResponse,
    SubmitResponse,
    UploadResponse,
)

CONTRACT = "imagepipeline"
LIGHTNING_STEPS = 8

_ERROR_TITLES = {
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    410: "Gone",
    413: "Payload Too Large",
    421: "Misdirected Request",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def render_error(exc: ServiceError) -> JSONResponse:
    body = ImagePipelineErrorBody(
        error=_ERROR_TITLES.get(exc.http_status, "Error"),
        error_code=exc.code,
        message=exc.message,
        field=exc.field,
    )
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=exc.http_status, headers=headers)


def _or(value, default):
    return default if value is None else value


class ImagePipelineService(ContractService):
    name = CONTRACT

    def webhook_body(self, record: JobRecord) -> dict:
        return self.render_status(record).model_dump(exclude={"webhook"})

    # -- edits -------------------------------------------------------------------------------
    def submit(self, req: EditRequest, owner: str, idempotency_key: str | None = None) -> SubmitResponse:
        self.core.check_server_id(req.server_id)  # a pinned pod must exist and be alive (server/pods.py)
        if req.mask_segment is not None:
            raise ServiceError(
                "UNSUPPORTED_PARAMETER",
                "mask_segment is not supported: this server has no segmentation model",
                field="mask_segment",
            )
        if req.callback_url is not None:  # the policy of input URLs, told now rather than never
            check_callback_url(req.callback_url, self.core.inputs.fetch_policy, "callback_url")
        if req.profile_id is not None:
            req = apply_profile(req, self.core.profile(req.profile_id, owner).data)

        images = [req.input_image] if isinstance(req.input_image, str) else list(req.input_image or [])
        chosen = self.resolve_model(req.model)
        params = EditParams(
            prompt=req.prompt,
            model=chosen.model if chosen else None,
            enhance_prompt=bool(chosen and chosen.enhance_prompt),
            negative_prompt=req.negative_prompt,
            lightning_steps=LIGHTNING_STEPS if req.faster_inference else None,
            num_inference_steps=req.num_inference_steps,
            guidance_scale=req.guidance_scale,
            refine_strength=req.refine_strength or 0.0,
            width=req.width,
            height=req.height,
            seed=req.seed,
            output_format=req.output_format,
            product_saturation=req.product_saturation,
            tone_correction=req.tone_correction or 0.0,
            palette=req.palette or [],
            has_text=bool(req.has_text),
            has_product=bool(req.has_product),
            mode=req.mode,
            # unset: the engine's defaults
            cfg_norm_strength=req.cfg_norm_strength,
            mask_feather_px=_or(req.mask_feather_px, EditParams.mask_feather_px),
        )
        meta = JobMeta(
            contract=CONTRACT,
            owner=owner,
            callback_url=req.callback_url,
            profile_id=req.profile_id,
            server_id=req.server_id,
        )
        mask = NamedInput(req.mask_image, "mask_image") if req.mask_image is not None else None
        record = self.core.submit(
            params, images, meta, image_field="input_image", mask=mask, idempotency_key=idempotency_key
        )
        return SubmitResponse(
            job_id=record.id,
            estimated_time_seconds=round(record.estimated_seconds or self.core.estimate_new(record)),
        )

    def status(self, job_id: str, owner: str) -> StatusResponse:
        return self._with_webhook(self.own_job(job_id, owner))

    def cancel(self, job_id: str, owner: str) -> StatusResponse:
        self.own_job(job_id, owner)
        return self._with_webhook(self.core.cancel(job_id, owner))

    def _with_webhook(self, record: JobRecord) -> StatusResponse:
        # Only the status endpoint says how the webhook went; the webhook's own body does not.
        body = self.render_status(record)
        return body.model_copy(update={"webhook": self.core.webhook_state(record)})

    def render_status(self, record: JobRecord) -> StatusResponse:
        now = time.time()
        urls = self.core.inputs.result_urls(record) if record.status == JobStatus.COMPLETED else []
        done = record.status.is_terminal()
        progress = (
            100
            if record.status == JobStatus.COMPLETED
            else (record.progress.percent() if record.progress else 0)
        )
        warnings = list(record.warnings)
        if record.status == JobStatus.COMPLETED and not urls:
            warnings.append(f"the result expired after {self.core.settings.result_ttl_s:g} s and was removed")
        processing = (record.finished_at or now) - record.started_at if record.started_at else None
        return StatusResponse(
            job_id=record.id,
            status=record.status.value,
            progress=progress,
            progress_detail=record.progress.model_dump() if record.progress and not done else None,
            result_url=urls[0] if urls else None,
            result_urls=urls,
            result_mime_type=record.results[0].mime_type if urls else None,
            error=record.error,
            failure_reason_code=record.failure_reason_code,
            retryable=record.retryable,
            warnings=warnings,
            queue_position=record.queue_position,
            queue_wait_seconds=round(record.queue_wait_seconds(now), 3),
            inference_time_seconds=round(record.inference_seconds, 3) if record.inference_seconds else None,
            processing_time_seconds=round(processing, 3) if processing is not None else None,
            total_elapsed_seconds=round(record.total_seconds(now), 3),
            estimated_time_seconds=round(record.estimated_seconds) if record.estimated_seconds else None,
            prompt_hash=record.prompt_hash,
            seed=record.seed,
            cost_usd=self.core.cost_usd(record),
            balance_remaining_usd=self.core.balance(record.meta.owner),
            # the pod that ran (or is pinned to run) the job; this server when it cannot tell
            server_id=record.ran_on or record.meta.server_id or self.core.settings.server_id,
        )

    # -- uploads -----------------------------------------------------------------------------
    def upload(self, data: bytes, filename: str | None, owner: str) -> UploadResponse:
        upload, url = self.core.inputs.save_upload(data, filename, owner)
        return UploadResponse(
            url=url, filename=upload.filename, content_type=upload.content_type, size_bytes=upload.size_bytes
        )

    # -- profiles ----------------------------------------------------------------------------
    def create_profile(self, req: ProfileRequest, owner: str) -> ProfileResponse:
        check_template(req.prompt_template)
        if req.seed_strategy == "fixed" and req.fixed_seed is None:
            raise ServiceError(
                "INVALID_PARAMETERS", "seed_strategy 'fixed' needs fixed_seed", field="fixed_seed"
            )
        profile = Profile(id=new_id("prof"), owner=owner, data=req.model_dump(), created_at=time.time())
        self.core.add_profile(profile)
        return self._profile_body(profile)

    def get_profile(self, profile_id: str, owner: str) -> ProfileResponse:
        return self._profile_body(self.core.profile(profile_id, owner))

    def list_profiles(self, owner: str) -> ProfileList:
        profiles = [self._profile_body(p) for p in self.core.list_profiles(owner)]
        return ProfileList(profiles=profiles, total=len(profiles))

    def delete_profile(self, profile_id: str, owner: str) -> None:
        self.core.delete_profile(profile_id, owner)

    @staticmethod
    def _profile_body(profile: Profile) -> ProfileResponse:
        return ProfileResponse(profile_id=profile.id, created_at=profile.created_at, **profile.data)
