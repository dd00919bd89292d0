"""Thin FastAPI router of the OpenAI-compatible / IG1 contract: ``/v1/images/edits``, ``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..common import api_key, idempotency_key, route_class
from .parsing import parse_edit_request
from .protocol import EditRequest, ImagesResponse, ModelCard, ModelList, OpenAIErrorBody
from .service import OpenAIService, render_error
from .streaming import stream

JOB_ID_HEADER = "X-Retouch-Job-Id"


def _inline_schema(model) -> dict:
    """The model's JSON schema with its $defs inlined, so it can sit inside an operation."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _multipart_schema() -> dict:
    fields = _inline_schema(EditRequest)
    props = {k: v for k, v in fields["properties"].items() if k not in ("images", "mask")}
    binary = {"type": "string", "format": "binary"}
    props = {
        "image": binary,
        "image[]": {"type": "array", "items": binary},
        "mask": binary | {"description": "PNG with alpha: transparent = edit"},
    } | props
    return {"type": "object", "properties": props, "required": ["prompt"]}


EDIT_REQUEST_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_schema(EditRequest)},
            "multipart/form-data": {"schema": _multipart_schema()},
        },
    }
}
STREAM_DOC = {
    "description": "With stream=true: Server-Sent Events image_edit.partial_image, then image_edit.completed",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def build_router(service: OpenAIService) -> APIRouter:
    core = service.core
    router = APIRouter(prefix="/v1", route_class=route_class(render_error), tags=["openai"])
    errors = {code: {"model": OpenAIErrorBody} for code in (400, 401, 404, 413, 429, 500, 503)}

    def owner(key: str | None = Depends(api_key(bearer_first=True))) -> str:
        return core.authenticate(key)

    @router.get("/models", response_model=ModelList, responses=errors)
    def list_models(who: str = Depends(owner)) -> ModelList:
        return service.models()

    @router.get("/models/{model_id}", response_model=ModelCard, responses=errors)
    def get_model(model_id: str, who: str = Depends(owner)) -> ModelCard:
        return service.model(model_id)

    @router.post(
        "/images/edits",
        response_model=ImagesResponse,
        response_model_exclude_none=True,
        openapi_extra=EDIT_REQUEST_DOC,
        responses={**errors, 200: STREAM_DOC},
    )
    async def edit_images(
        request: Request, who: str = Depends(owner), idem: str | None = Depends(idempotency_key)
    ):
        req, image_field = await parse_edit_request(request)
        record, plan = await run_in_threadpool(service.submit, req, who, idem, image_field=image_field)
        headers = {JOB_ID_HEADER: record.id}
        if plan.stream:
            headers["Cache-Control"] = "no-cache"
            return StreamingResponse(
                stream(service, record, who, plan), media_type="text/event-stream", headers=headers
            )
        record = await service.wait(record, who, request)
        body = await run_in_threadpool(service.respond, record, plan)
        return JSONResponse(body.model_dump(exclude_none=True), headers=headers)

    return router
