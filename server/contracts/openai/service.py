"""OpenAI/IG1 semantics on top of the core: request -> EditJob, wait for it, answer in OpenAI's shapes.

The hosted endpoint is synchronous, so the request waits for its job (woken by the job-change
signal, server/job_events.py) and answers with the pictures; a client that goes away cancels its job. The
``quality`` values and the ``model`` names come from weights.yaml (``qualities``, ``public_models``).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse

from pipelines.registry import PublicModel, QualityPreset
from pipelines.spec import EditParams

from ...core import NamedInput
from ...errors import ServiceError, http_status_for
from ...jobs import JobMeta, JobRecord, JobStatus
from ..base import ClientGone, ContractService, WaitedTooLong
from .protocol import (
    EditRequest,
    ErrorDetail,
    ImageData,
    ImagesResponse,
    InputTokensDetails,
    ModelCard,
    ModelList,
    OpenAIErrorBody,
    Usage,
)

CONTRACT = "openai"
# A synchronous request gives up after this long; the job ends by itself (timeouts, retries) sooner.
MAX_WAIT_S = 3600.0
# The transformer sees one token per 16x16 pixels (8x VAE, 2x2 patches): what `usage` counts.
PIXELS_PER_TOKEN_SIDE = 16
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")

# Our code -> OpenAI's (type, code); anything else is an invalid_request_error (4xx) or server_error.
_OPENAI_KINDS = {
    "UNAUTHORIZED": ("invalid_request_error", "invalid_api_key"),
    "FORBIDDEN": ("invalid_request_error", "insufficient_permissions"),
    "INSUFFICIENT_BALANCE": ("insufficient_quota", "insufficient_quota"),
    "RATE_LIMITED": ("requests", "rate_limit_exceeded"),
    "CONCURRENCY_LIMITED": ("requests", "rate_limit_exceeded"),
    "QUEUE_FULL": ("server_error", "server_overloaded"),
    "FILE_TOO_LARGE": ("invalid_request_error", "file_too_large"),
    "PAYLOAD_TOO_LARGE": ("invalid_request_error", "file_too_large"),
}


def render_error(exc: ServiceError) -> JSONResponse:
    status = http_status_for(exc.code, CONTRACT)
    kind, code = _OPENAI_KINDS.get(
        exc.code, ("server_error" if status >= 500 else "invalid_request_error", exc.code.lower())
    )
    if exc.code == "NOT_FOUND" and exc.field == "model":
        code = "model_not_found"
    body = OpenAIErrorBody(error=ErrorDetail(message=exc.message, type=kind, param=exc.field, code=code))
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


@dataclass(frozen=True)
class Plan:
    """How to answer a submitted edit (the job itself holds how to make it)."""

    quality: str
    response_format: str
    output_format: str
    enhance: bool
    stream: bool
    # a request with an Idempotency-Key: a retry must get the same pictures, so they are kept (TTL)
    keep_results: bool = False


class OpenAIService(ContractService):
    name = CONTRACT

    # -- models ------------------------------------------------------------------------------
    def _created(self) -> int:
        source = self.core.registry.source
        return int(Path(source).stat().st_mtime) if source and Path(source).exists() else 0

    def models(self) -> ModelList:
        return ModelList(data=[self._card(name, public) for name, public in self.public_models().items()])

    def model(self, model_id: str) -> ModelCard:
        public = self.public_models().get(model_id)
        if public is None:
            raise self._unknown_model(model_id)
        return self._card(model_id, public)

    def _card(self, name: str, public: PublicModel) -> ModelCard:
        registry = self.core.registry
        entry = registry.models[public.model]
        return ModelCard(
            id=name,
            created=self._created(),
            model=public.model,
            license=entry.license.describe() if entry.license else None,
            max_input_images=registry.max_input_images(public.model),
            max_pictures=registry.max_pictures(public.model),
            native_pixels=entry.native_pixels or entry.vae_condition_pixels,
            prompt_enhancing=public.enhance_prompt,
        )

    def _unknown_model(self, name: str) -> ServiceError:
        have = ", ".join(sorted(self.public_models())) or "none"
        return ServiceError("NOT_FOUND", f"The model {name!r} does not exist (have: {have})", field="model")

    # -- edits -------------------------------------------------------------------------------
    def _quality(self, name: str) -> QualityPreset:
        table = self.core.registry.qualities
        if not table:  # an older weights.yaml: everything runs like "auto" used to
            steps = 8 if self.core.registry.lightning_lora(8) else None
            return QualityPreset(lightning_steps=steps)
        if name not in table:
            raise ServiceError(
                "INVALID_PARAMETERS",
                f"quality must be one of {', '.join(table)}, got {name!r}",
                field="quality",
            )
        return table[name]

    def _size(self, size: str | None) -> tuple[int | None, int | None]:
        if size is None or size.strip().lower() == "auto":
            return None, None
        match = _SIZE.match(size)
        if not match:
            raise ServiceError(
                "INVALID_PARAMETERS", f"size must be WIDTHxHEIGHT or auto, got {size!r}", field="size"
            )
        width, height = int(match[1]), int(match[2])
        limit = self.core.registry.limits.max_output_side
        if not (1 <= width <= limit and 1 <= height <= limit):
            raise ServiceError(
                "INVALID_PARAMETERS",
                f"size {width}x{height}: each side must be within 1..{limit} px",
                field="size",
            )
        return width, height

    def submit(
        self, req: EditRequest, owner: str, idempotency_key: str | None = None, *, image_field: str
    ) -> tuple[JobRecord, Plan]:
        public = self.public_models().get(req.model)
        if public is None:
            raise self._unknown_model(req.model)
        if req.background == "transparent":
            raise ServiceError(
                "UNSUPPORTED_PARAMETER",
                "background 'transparent' is not supported: the model paints opaque pictures",
                field="background",
            )
        if req.n > self.core.registry.limits.max_num_images:
            raise ServiceError(
                "INVALID_PARAMETERS",
                f"n must be at most {self.core.registry.limits.max_num_images}",
                field="n",
            )
        quality_name = req.quality or "auto"
        preset = self._quality(quality_name)
        width, height = self._size(req.size)
        output_format = req.output_format or "png"
        params = EditParams(
            prompt=req.prompt,
            lightning_steps=preset.lightning_steps,
            num_inference_steps=preset.steps if preset.lightning_steps is None else None,
            width=width,
            height=height,
            num_images=req.n,
            seed=req.seed if req.seed is not None else -1,
            output_format=output_format,
            model=public.model,
            enhance_prompt=public.enhance_prompt,
            # previews cost a decode each: made only when someone streams them
            partial_images=(req.partial_images or 0) if req.stream else 0,
            output_quality=(
                max(req.output_compression, 1)
                if req.output_compression is not None and output_format != "png"
                else EditParams.output_quality
            ),
        )
        inputs: dict = {"image_field": image_field}
        if req.mask is not None:
            url = req.mask if isinstance(req.mask, str) else req.mask.image_url
            inputs["mask"] = NamedInput(url=url, field="mask")
        meta = JobMeta(contract=CONTRACT, owner=owner, options={"model": req.model, "quality": quality_name})
        images = [i.image_url for i in req.images]
        record = self.core.submit(params, images, meta, idempotency_key=idempotency_key, **inputs)
        plan = Plan(
            quality=quality_name,
            response_format=req.response_format or "b64_json",
            output_format=output_format,
            enhance=public.enhance_prompt,
            stream=req.stream,
            keep_results=idempotency_key is not None,
        )
        return record, plan

    async def wait(self, record: JobRecord, owner: str, request: Request) -> JobRecord:
        """The job once it has ended; a client that disconnects first cancels it."""
        try:
            return await self.wait_for_end(record, request, MAX_WAIT_S)
        except WaitedTooLong:
            raise ServiceError("JOB_TIMEOUT", f"the edit did not finish within {MAX_WAIT_S:g} s") from None
        except ClientGone:
            self.core.cancel(record.id, owner)
            raise ServiceError("CANCELLED", "the client disconnected; the edit was cancelled") from None
        except asyncio.CancelledError:  # servers that cancel the handler of a closed connection
            self.core.cancel(record.id, owner)
            raise

    @staticmethod
    def _usage(record: JobRecord) -> Usage:
        side = PIXELS_PER_TOKEN_SIDE
        out = sum(math.ceil(r.width / side) * math.ceil(r.height / side) for r in record.results)
        return Usage(
            total_tokens=out, input_tokens=0, output_tokens=out, input_tokens_details=InputTokensDetails()
        )

    def _drop_inline(self, record: JobRecord, plan: Plan) -> None:
        """Pictures sent inline are not kept, as nothing else can ask for them; unless the request
        carried an Idempotency-Key: a retry of it must get the same answer (kept until the TTL)."""
        if not plan.keep_results:
            self.core.inputs.drop_results(record)

    def _pictures(self, record: JobRecord) -> list[bytes]:
        blobs = self.core.inputs.result_bytes(record)
        if blobs is None:
            raise ServiceError("INPUT_EXPIRED", "the edited pictures expired before they could be sent")
        return blobs

    def respond(self, record: JobRecord, plan: Plan) -> ImagesResponse:
        if record.status != JobStatus.COMPLETED:
            raise self.failure(record)
        if plan.response_format == "url":
            data = [
                ImageData(url=url, revised_prompt=r.revised_prompt if plan.enhance else None)
                for url, r in zip(self.core.inputs.result_urls(record), record.results, strict=True)
            ]
        else:
            blobs = self._pictures(record)
            self._drop_inline(record, plan)
            data = [
                ImageData(
                    b64_json=base64.b64encode(blob).decode(),
                    revised_prompt=r.revised_prompt if plan.enhance else None,
                )
                for blob, r in zip(blobs, record.results, strict=True)
            ]
        first = record.results[0]
        return ImagesResponse(
            created=int(record.finished_at or time.time()),
            data=data,
            usage=self._usage(record),
            output_format=plan.output_format,
            quality=plan.quality,
            size=f"{first.width}x{first.height}",
        )

    # -- streaming ---------------------------------------------------------------------------
