"""Thin FastAPI router of the FASHN contract: parse, authenticate, call the service."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from ..common import api_key, idempotency_key, route_class
from .protocol import FashnErrorBody, FashnStatusResponse, RunRequest, RunResponse
from .service import FashnService, render_error

_ERRORS: dict = {status: {"model": FashnErrorBody} for status in (400, 401, 404, 429, 500)}
# FASHN answers bad input with 400 BadRequest, never 422: say so instead of FastAPI's default 422.
_ERRORS["4XX"] = {"model": FashnErrorBody, "description": "Any other client error, sent as 400 BadRequest"}


def build_router(service: FashnService) -> APIRouter:
    core = service.core
    router = APIRouter(route_class=route_class(render_error), tags=["fashn"], responses=_ERRORS)

    def owner(key: str | None = Depends(api_key(bearer_first=True))) -> str:
        # The FASHN client sends a Bearer token; X-API-Key works too, as on the other contracts.
        return core.authenticate(key)

    @router.post("/v1/run", response_model=RunResponse)
    def run(
        req: RunRequest, who: str = Depends(owner), idem: str | None = Depends(idempotency_key)
    ) -> RunResponse:
        return service.submit(req, who, idem)

    @router.get("/v1/status/{prediction_id}", response_model=FashnStatusResponse)
    def status(prediction_id: str, who: str = Depends(owner)) -> JSONResponse:
        body, after_send = service.status(prediction_id, who)
        # The hosted body has exactly id, status, output, error; the extension only when it says something.
        content = body.model_dump(exclude={"webhook"} if body.webhook is None else None)
        background = BackgroundTask(after_send) if after_send is not None else None
        return JSONResponse(content, background=background)

    return router
