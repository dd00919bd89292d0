"""Thin FastAPI router of the imagepipeline.io contract: parse, authenticate, call the service."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from ...multipart import read_upload
from ..common import api_key, idempotency_key, route_class
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
from .service import ImagePipelineService, render_error

# Every error this contract answers, in its own body (documented in /docs as such, not FastAPI's).
_ERRORS = {
    status: {"model": ImagePipelineErrorBody} for status in (401, 402, 403, 404, 409, 413, 422, 429, 503)
}
# The upload is parsed by hand (the official client's multipart quirk), so its body is declared here.
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            }
        },
    }
}


def build_router(service: ImagePipelineService) -> APIRouter:
    core = service.core
    router = APIRouter(route_class=route_class(render_error), tags=["imagepipeline"], responses=_ERRORS)

    def owner(key: str | None = Depends(api_key(bearer_first=False))) -> str:
        return core.authenticate(key)

    @router.post("/edit/image/v1", response_model=SubmitResponse, status_code=200)
    def submit_edit(
        req: EditRequest, who: str = Depends(owner), idem: str | None = Depends(idempotency_key)
    ) -> SubmitResponse:
        return service.submit(req, who, idem)

    @router.get("/edit/image/v1/status/{job_id}", response_model=StatusResponse)
    def edit_status(job_id: str, who: str = Depends(owner)) -> StatusResponse:
        return service.status(job_id, who)

    # Not in the hosted API: a Retouch extension so queued and running jobs can be stopped.
    @router.post("/edit/image/v1/cancel/{job_id}", response_model=StatusResponse)
    def cancel_edit(job_id: str, who: str = Depends(owner)) -> StatusResponse:
        return service.cancel(job_id, who)

    @router.post("/upload/image/v1", response_model=UploadResponse, openapi_extra=_UPLOAD_BODY)
    async def upload_image(request: Request, who: str = Depends(owner)) -> UploadResponse:
        data, filename = await read_upload(request, "file", core.settings.upload_max_bytes)
        return await run_in_threadpool(service.upload, data, filename, who)

    @router.post("/profiles/v1", response_model=ProfileResponse)
    def create_profile(req: ProfileRequest, who: str = Depends(owner)) -> ProfileResponse:
        return service.create_profile(req, who)

    @router.get("/profiles/v1", response_model=ProfileList)
    def list_profiles(who: str = Depends(owner)) -> ProfileList:
        return service.list_profiles(who)

    @router.get("/profiles/v1/{profile_id}", response_model=ProfileResponse)
    def get_profile(profile_id: str, who: str = Depends(owner)) -> ProfileResponse:
        return service.get_profile(profile_id, who)

    @router.delete("/profiles/v1/{profile_id}", status_code=204)
    def delete_profile(profile_id: str, who: str = Depends(owner)) -> Response:
        service.delete_profile(profile_id, who)
        return Response(status_code=204)

    return router
