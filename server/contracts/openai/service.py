"""OpenAI/IG1 semantics on top of the core: request -> EditJob, wait for it, answer in OpenAI's shapes.

The hosted endpoint is synchronous, so the request waits for its job (polling the store, as every
other reader does) and answers with the pictures; a client that goes away cancels its job. The
``quality`` values and the ``model`` names come from weights.yaml (``qualities``, ``public_models``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from pipelines.registry import PublicModel, QualityPreset
from pipelines.spec import EditParams

from ...auth import request_headers
from ...core import Core, NamedInput
from ...errors import ServiceError, http_status_for
from ...jobs import JobMeta, JobRecord, JobStatus
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
POLL_S = 0.1
# A synchronous request gives up after this long; the job ends by itself (timeouts, retries) sooner.
MAX_WAIT_S = 3600.0
# The transformer sees one token per 16x16 pixels (8x VAE, 2x2 patches): what `usage` counts.
PIXELS_PER_TOKEN_SIDE = 16
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
_PREVIEW = re.compile(r"^(\d+)-(\d+)\.(png|jpeg|webp)$")
# model names offered when weights.yaml has no public_models table (older registries)
DEFAULT_PUBLIC_MODELS = {"qwen-image-edit": False, "qwen-image-edit-pe": True}

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


def _sse(event: str, payload: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class OpenAIService:
    def __init__(self, core: Core):
        self.core = core
        core.status_renderers[CONTRACT] = lambda r: {"id": r.id, "status": r.status.value, "error": r.error}

    # -- models ------------------------------------------------------------------------------
    def public_models(self) -> dict[str, PublicModel]:
        registry = self.core.registry
        if registry.public_models:
            return dict(registry.public_models)
        found = registry.model_for("edit_plus") or registry.model_for("edit")
        if found is None:
            return {}
        return {
            name: PublicModel(model=found[0], enhance_prompt=pe) for name, pe in DEFAULT_PUBLIC_MODELS.items()
        }

    def _created(self) -> int:
        source = self.core.registry.source
        return int(Path(source).stat().st_mtime) if source and Path(source).exists() else 0

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=self._created()) for name in self.public_models()])

    def model(self, model_id: str) -> ModelCard:
        if model_id not in self.public_models():
            raise self._unknown_model(model_id)
        return ModelCard(id=model_id, created=self._created())

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

    def submit(self, req: EditRequest, owner: str, *, image_field: str) -> tuple[JobRecord, Plan]:
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
        record = self.core.submit(params, [i.image_url for i in req.images], meta, **inputs)
        plan = Plan(
            quality=quality_name,
            response_format=req.response_format or "b64_json",
            output_format=output_format,
            enhance=public.enhance_prompt,
            stream=req.stream,
        )
        return record, plan

    async def wait(self, record: JobRecord, owner: str, request: Request) -> JobRecord:
        """The job once it has ended; a client that disconnects first cancels it."""
        deadline = time.monotonic() + MAX_WAIT_S
        try:
            while not record.status.is_terminal():
                if await request.is_disconnected():
                    self.core.cancel(record.id, owner)
                    raise ServiceError("CANCELLED", "the client disconnected; the edit was cancelled")
                if time.monotonic() > deadline:
                    raise ServiceError("JOB_TIMEOUT", f"the edit did not finish within {MAX_WAIT_S:g} s")
                await asyncio.sleep(POLL_S)
                record = await run_in_threadpool(self.core.get_job, record.id, owner)
        except asyncio.CancelledError:  # servers that cancel the handler of a closed connection
            self.core.cancel(record.id, owner)
            raise
        return record

    @staticmethod
    def _failure(record: JobRecord) -> ServiceError:
        return ServiceError(record.failure_reason_code or "INTERNAL_ERROR", record.error or "the edit failed")

    @staticmethod
    def _usage(record: JobRecord) -> Usage:
        side = PIXELS_PER_TOKEN_SIDE
        out = sum(math.ceil(r.width / side) * math.ceil(r.height / side) for r in record.results)
        return Usage(
            total_tokens=out, input_tokens=0, output_tokens=out, input_tokens_details=InputTokensDetails()
        )

    def _drop_inline(self, record: JobRecord) -> None:
        """Pictures sent inline are not kept, as nothing else can ask for them; unless the request
        carried an Idempotency-Key: a retry of it must get the same answer (kept until the TTL)."""
        if not (request_headers.get() or {}).get("idempotency-key"):
            self.core.drop_results(record)

    def _pictures(self, record: JobRecord) -> list[bytes]:
        blobs = self.core.result_bytes(record)
        if blobs is None:
            raise ServiceError("INPUT_EXPIRED", "the edited pictures expired before they could be sent")
        return blobs

    def respond(self, record: JobRecord, plan: Plan) -> ImagesResponse:
        if record.status != JobStatus.COMPLETED:
            raise self._failure(record)
        if plan.response_format == "url":
            data = [
                ImageData(url=url, revised_prompt=r.revised_prompt if plan.enhance else None)
                for url, r in zip(self.core.result_urls(record), record.results, strict=True)
            ]
        else:
            blobs = self._pictures(record)
            self._drop_inline(record)
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
    def _previews(self, job_id: str) -> list[tuple[int, int, Path]]:
        folder = self.core.files.path(f"previews/{job_id}")
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = _PREVIEW.match(path.name)
            if match:
                found.append((int(match[1]), int(match[2]), path))
        return sorted(found)

    async def stream(self, record: JobRecord, owner: str, plan: Plan) -> AsyncIterator[bytes]:
        """``image_edit.partial_image`` events as the worker writes previews, then one
        ``image_edit.completed`` per picture (or an ``error`` event), as the openai client reads them."""
        sent: set[tuple[int, int]] = set()
        finished = False
        base = {"background": "opaque", "output_format": plan.output_format, "quality": plan.quality}
        try:
            while True:
                record = await run_in_threadpool(self.core.get_job, record.id, owner)
                # Previews are written before the job ends, so this scan after a terminal read is complete.
                for image_index, partial_index, path in self._previews(record.id):
                    if (image_index, partial_index) in sent:
                        continue
                    sent.add((image_index, partial_index))
                    data = path.read_bytes()
                    yield _sse(
                        "image_edit.partial_image",
                        base
                        | {
                            "type": "image_edit.partial_image",
                            "b64_json": base64.b64encode(data).decode(),
                            "created_at": int(time.time()),
                            "partial_image_index": len(sent) - 1,
                            "size": _picture_size(data),
                        },
                    )
                if record.status.is_terminal():
                    break
                await asyncio.sleep(POLL_S)
            finished = True
            if record.status != JobStatus.COMPLETED:
                failure = self._failure(record)
                yield _sse("error", json.loads(render_error(failure).body))
                return
            usage = self._usage(record).model_dump()
            blobs = self._pictures(record)
            for blob, result in zip(blobs, record.results, strict=True):
                event = base | {
                    "type": "image_edit.completed",
                    "b64_json": base64.b64encode(blob).decode(),
                    "created_at": int(record.finished_at or time.time()),
                    "size": f"{result.width}x{result.height}",
                    "usage": usage,
                }
                if plan.enhance:
                    event["revised_prompt"] = result.revised_prompt
                yield _sse("image_edit.completed", event)
            self._drop_inline(record)
        finally:
            if not finished:  # the client went away mid-stream: nobody will read this edit
                self.core.cancel(record.id, owner)
            self.core.files.delete_tree(f"previews/{record.id}")


def _picture_size(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        return f"{img.width}x{img.height}"
