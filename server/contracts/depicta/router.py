"""Thin FastAPI router of the Depicta contract: parse, authenticate, call the service."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ...errors import ServiceError
from ...multipart import FormLimits, open_form, read_file, read_upload
from ..common import api_key, idempotency_key, route_class
from ..json_body import parse_json_object
from .protocol import (
    DepictaErrorBody,
    DepictaUploadResponse,
    EditRequest,
    GenerationResponse,
    JobDetail,
    JobList,
)
from .service import DepictaService, render_error

JOB_HEADER = "X-Depicta-Job-Id"
_ERRORS = {status: {"model": DepictaErrorBody} for status in (401, 402, 404, 409, 413, 422, 429, 500, 503)}
_FORM_FIELDS = ("prompt", "model", "aspect_ratio", "image_size", "strictness")
_EDIT_FORM = FormLimits(max_files=1, max_fields=len(_FORM_FIELDS))


def _inline(schema: dict) -> dict:
    """A model's JSON schema with its ``$defs`` inlined, for an OpenAPI ``requestBody``."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


_EDIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline(EditRequest.model_json_schema())},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        **{name: {"type": "string"} for name in _FORM_FIELDS},
                    },
                }
            },
        },
    }
}


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _validated(fields: dict) -> EditRequest:
    try:
        return EditRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def build_router(service: DepictaService) -> APIRouter:
    core = service.core
    router = APIRouter(route_class=route_class(render_error), tags=["depicta"], responses=_ERRORS)

    def owner(key: str | None = Depends(api_key(bearer_first=True))) -> str:
        # The Depicta CLI sends a Bearer token; X-API-Key works too, as on the other contracts.
        return core.authenticate(key)

    @router.post("/v1/upload", response_model=DepictaUploadResponse, openapi_extra=_UPLOAD_BODY)
    async def upload(request: Request, who: str = Depends(owner)) -> DepictaUploadResponse:
        data, filename = await read_upload(request, "image", core.settings.upload_max_bytes)
        return await run_in_threadpool(service.upload, data, filename, who)

    @router.post("/v1/edit/image", response_model=GenerationResponse, openapi_extra=_EDIT_BODY)
    async def edit_image(
        request: Request, who: str = Depends(owner), idem: str | None = Depends(idempotency_key)
    ) -> JSONResponse:
        """Synchronous: answers when the edit is done. The job id is in ``X-Depicta-Job-Id`` on
        every answer after the job was queued, and the job stays readable at ``/v1/jobs/{id}``."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            req = await _form_request(request, who)
        else:
            req = _validated(parse_json_object(await request.body()))
        record = await run_in_threadpool(service.submit, req, who, idem)
        try:
            record = await service.wait(record, request)
            body = await run_in_threadpool(service.generation, record)
        except ServiceError as exc:
            failed = render_error(exc)
            failed.headers[JOB_HEADER] = record.id
            return failed
        return JSONResponse(body.model_dump(exclude_none=True), headers={JOB_HEADER: record.id})

    async def _form_request(request: Request, who: str) -> EditRequest:
        # The hosted docs' form: an `image` file plus the JSON fields as form fields.
        limit = core.settings.upload_max_bytes
        async with open_form(request, _EDIT_FORM, field="image", max_bytes=limit) as form:
            unknown = sorted(set(form) - {"image", *_FORM_FIELDS})
            if unknown:
                raise ServiceError("INVALID_PARAMETERS", f"{unknown[0]}: unknown field", field=unknown[0])
            data, filename = await read_file(form, "image", limit)
            fields = {name: form[name] for name in _FORM_FIELDS if isinstance(form.get(name), str)}
        uploaded = await run_in_threadpool(service.upload, data, filename, who)
        return _validated({**fields, "input_image_url": uploaded.upload_url})

    @router.get("/v1/jobs", response_model=JobList, response_model_exclude_none=True)
    def list_jobs(limit: int = Query(default=20, ge=1, le=100), who: str = Depends(owner)) -> JobList:
        return service.list_jobs(who, limit)

    @router.get("/v1/jobs/{job_id}", response_model=JobDetail, response_model_exclude_none=True)
    def get_job(job_id: str, who: str = Depends(owner)) -> JobDetail:
        return service.job_detail(job_id, who)

    # The JPEG and WebP variants of a result; the signature in the URL stands in for the key.
    @router.get("/v1/jobs/{job_id}/images/{name}", include_in_schema=False)
    def variant(job_id: str, name: str, expires: str | None = None, sig: str | None = None) -> Response:
        data, mime = service.variant_file(job_id, name, expires, sig)
        return Response(data, media_type=mime)

    return router
