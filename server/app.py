"""The FastAPI application: core objects, contract routers, files, health; workers in the lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from pipelines.registry import load_registry

from . import signing
from .contracts.imagepipeline import build_router as imagepipeline_router
from .core import Core
from .errors import ServiceError
from .files import FileStore
from .settings import Settings
from .store import SQLiteStore
from .supervisor import Supervisor
from .webhooks import WebhookSender

log = logging.getLogger("retouch.app")


def _plain_error(exc: ServiceError) -> JSONResponse:
    # Contract-neutral routes (files, health) answer in the primary contract's shape.
    return JSONResponse(
        {"error": exc.code.replace("_", " ").lower(), "error_code": exc.code, "message": exc.message},
        status_code=exc.http_status,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.ensure_secrets()
    registry = load_registry(settings.weights)
    store = SQLiteStore(
        settings.db_path,
        result_ttl_s=settings.result_ttl_s,
        default_job_seconds=settings.default_job_seconds,
        workers=settings.workers,
    )
    files = FileStore(settings.data_dir)
    core = Core(settings, registry, store, files)
    supervisor = Supervisor(settings, store, files, registry.limits.job_timeout_s)
    webhooks = WebhookSender(
        store, settings, lambda contract, record: core.status_renderers[contract](record)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        supervisor.start()
        webhooks.start()
        try:
            yield
        finally:
            webhooks.stop()
            supervisor.stop()

    app = FastAPI(title="Retouch", version="0.1.0", lifespan=lifespan)
    app.state.core = core
    app.state.supervisor = supervisor
    app.state.webhooks = webhooks
    app.include_router(imagepipeline_router(core))

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _plain_error(exc)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok", "server_id": settings.server_id}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        ready = supervisor.alive() > 0 and core.ready()
        body = {"status": "ready" if ready else "not ready", "workers_alive": supervisor.alive()}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/files/{kind}/{rest:path}", tags=["files"])
    def serve_file(kind: str, rest: str, expires: str | None = None, sig: str | None = None) -> FileResponse:
        path = f"/files/{kind}/{rest}"
        signing.verify(settings.signing_secret, path, expires, sig)
        relative = f"{kind}/{rest}"
        if kind == "uploads":
            upload = store.get_upload(rest.split("/")[0])
            relative = upload.path if upload else relative
        if kind not in ("uploads", "results") or not files.exists(relative):
            raise ServiceError("NOT_FOUND", "this file has expired or does not exist")
        media = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}.get(
            relative.rsplit(".", 1)[-1]
        )
        return FileResponse(files.path(relative), media_type=media)

    return app
