"""The FastAPI application: core objects, contract routers, files, health; workers in the lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from pipelines.mime import mime_for_name
from pipelines.registry import load_registry
from pipelines.weights_set import describe

from . import metrics, playground, signing
from .contracts.base import discover
from .contracts.common import api_key
from .core import Core
from .errors import ServiceError
from .files import FileStore
from .job_events import JobEvents
from .limits import RequestGuard
from .pods import PodAgent, build_servers_router
from .secret_bootstrap import bootstrap_secrets
from .settings import Settings
from .store import open_store
from .supervisor import Supervisor
from .webhooks import WebhookSender

log = logging.getLogger("retouch.app")
CONTRACTS = discover()  # every package under server/contracts/ (server/contracts/base.py)


def _plain_error(exc: ServiceError) -> JSONResponse:
    # Contract-neutral routes (files, health) answer in the primary contract's shape.
    return JSONResponse(
        {"error": exc.code.replace("_", " ").lower(), "error_code": exc.code, "message": exc.message},
        status_code=exc.http_status,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    bootstrap_secrets(settings)
    registry = load_registry(settings.weights)
    weights_info = describe(registry, settings.weights)
    store = open_store(settings)  # Redis when RETOUCH_REDIS_URL is set (several pods), else SQLite
    files = FileStore(settings.files_root)
    supervisor = Supervisor(settings, store, files, registry.limits.job_timeout_s)
    pods = PodAgent(settings, store, registry, supervisor)
    events = JobEvents(settings)  # wakes requests waiting for a job (server/job_events.py)
    core = Core(settings, registry, store, files, pods=pods, events=events, on_queued=supervisor.wake)
    services = {contract.name: contract.service(core) for contract in CONTRACTS}
    webhooks = WebhookSender(store, settings, services)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        events.start()
        supervisor.start()
        if settings.role != "worker":  # worker pods post no webhooks; API pods share the outbox
            webhooks.start()
        pods.start()
        try:
            yield
        finally:
            if settings.role != "worker":
                webhooks.stop()
            pods.stop()
            supervisor.stop()
            events.stop()

    app = FastAPI(title="Retouch", version="0.1.0", lifespan=lifespan)
    app.state.core = core
    app.state.supervisor = supervisor
    app.state.webhooks = webhooks
    # Outermost: a body over the cap is refused before any of it is read (server/limits.py).
    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes, routes=app.router.routes)
    for contract in CONTRACTS:
        app.include_router(contract.router(services[contract.name]))
    app.include_router(build_servers_router(core, pods))

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _plain_error(exc)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok", "server_id": settings.server_id}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        # An API pod has no workers of its own: it is ready when some pod's worker is. Alive means
        # a live heartbeat, so a 503 never comes with a count that says otherwise.
        alive = supervisor.beating()
        shortage = core.storage.shortage()
        if supervisor.draining:
            reason = "the server is shutting down"
        elif shortage is not None:
            reason = f"STORAGE_FULL: {shortage}"
        elif alive == 0 and settings.role != "api":
            reason = "no worker is loaded and beating"
        elif not core.ready():
            reason = "no worker of any pod is loaded and beating"
        else:
            reason = None
        body = {"status": "ready" if reason is None else "not ready", "workers_alive": alive}
        body["weights"] = weights_info  # "demo" or the registry, and its revisions
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if reason is None else 503)

    @app.get("/admin/v1/keys", tags=["admin"])
    def list_api_keys(key: str | None = Depends(api_key(bearer_first=False))) -> dict:
        """The API keys (names, scopes, limits; never the keys or their hashes); scope admin."""
        core.authenticate(key, scope="admin")
        return {"keys": [k.model_dump(exclude={"sha256"}) for k in core.keys.all()]}

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
        media = mime_for_name(relative)
        return FileResponse(files.path(relative), media_type=media)

    # Prometheus scrape endpoint: store gauges read now plus every process's counters (server/metrics.py).
    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition(
            core.store, heartbeat_max_age_s=max(10.0, settings.lease_s), storage=core.storage
        )
        return Response(body, media_type=content_type)

    playground.mount(app)  # the web playground at / (server/static)

    return app
