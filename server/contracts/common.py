"""What every contract router shares: a route class that renders errors in the contract's body."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Form
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ..auth import presented_key
from ..errors import ServiceError
from .json_body import parse_json_object

log = logging.getLogger("retouch.http")

ErrorRenderer = Callable[[ServiceError], JSONResponse]


def describe_validation(exc: RequestValidationError) -> ServiceError:
    """The first problem of a request that failed schema validation, naming the field."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or "body"
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return ServiceError("INVALID_PARAMETERS", f"{field}: {msg}", field=field)


# Starlette's own refusals (a body it cannot parse, ...) by status, rendered as the contract's errors.
_HTTP_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 413: "PAYLOAD_TOO_LARGE"}


def from_http_exception(exc: HTTPException) -> ServiceError:
    if exc.status_code >= 500:
        return ServiceError("INTERNAL_ERROR", "internal error; it was logged")
    detail = exc.detail if isinstance(exc.detail, str) else "the request could not be read"
    return ServiceError(_HTTP_CODES.get(exc.status_code, "INVALID_PARAMETERS"), detail)


class StrictJSONRequest(Request):
    """A request whose ``json()`` is server.contracts.json_body's strict reader (FastAPI calls it)."""

    async def json(self):
        if not hasattr(self, "_strict_json"):
            self._strict_json = parse_json_object(await self.body())
        return self._strict_json


def _check_json_body(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ServiceError(
            "INVALID_PARAMETERS",
            f"send the body as application/json (it was {content_type or 'sent without a content type'})",
            field="body",
        )


def route_class(render: ErrorRenderer) -> type[APIRoute]:
    """An APIRoute whose errors (ours, validation, unexpected) all come out as ``render`` bodies."""

    class ContractRoute(APIRoute):
        # read by server.limits.RequestGuard to refuse an oversized body in this contract's shape
        error_renderer = staticmethod(render)

        def get_route_handler(self):
            handler = super().get_route_handler()
            reads_json = self.body_field is not None and not isinstance(self.body_field.field_info, Form)

            async def guarded(request: Request) -> Response:
                try:
                    if reads_json:
                        # Read and refuse here: FastAPI would turn any error of json() into a bare 400.
                        request = StrictJSONRequest(request.scope, request.receive)
                        _check_json_body(request)
                        await request.json()
                    return await handler(request)
                except ServiceError as exc:
                    return render(exc)
                except RequestValidationError as exc:
                    return render(describe_validation(exc))
                except HTTPException as exc:
                    return render(from_http_exception(exc))
                except Exception:
                    log.exception("unhandled error on %s %s", request.method, request.url.path)
                    return render(ServiceError("INTERNAL_ERROR", "internal error; it was logged"))

            return guarded

    return ContractRoute


def api_key(*, bearer_first: bool):
    """The FastAPI dependency giving the key a request carries (``Authorization`` or ``X-API-Key``;
    ``bearer_first`` where Authorization is the contract's own header)."""

    def presented(
        authorization: str | None = Header(default=None), x_api_key: str | None = Header(default=None)
    ) -> str | None:
        return presented_key(authorization, x_api_key, bearer_first=bearer_first)

    return presented


def idempotency_key(key: str | None = Header(default=None, alias="Idempotency-Key")) -> str | None:
    """A retried submission's key (server/limits.py Admission): the same key, the same job."""
    return key
