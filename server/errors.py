"""Domain errors of the server and the one table that maps every error code to HTTP.

Engine errors (``pipelines.errors``) keep their codes; each contract renders a ``ServiceError``
in its own body format. Messages are for the client: they name the field, never a path.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.errors import EngineError


@dataclass(frozen=True)
class ErrorKind:
    http_status: int
    retryable: bool = False


# code -> how it is answered. Codes are stable: clients branch on them.
ERROR_TABLE: dict[str, ErrorKind] = {
    "INVALID_PARAMETERS": ErrorKind(422),
    "INVALID_IMAGE": ErrorKind(422),
    "IMAGE_TOO_LARGE": ErrorKind(422),
    "UNSUPPORTED_PARAMETER": ErrorKind(422),
    "INPUT_FETCH_FAILED": ErrorKind(422),
    "INPUT_EXPIRED": ErrorKind(422),
    "FILE_TOO_LARGE": ErrorKind(413),
    "UNAUTHORIZED": ErrorKind(401),
    "INSUFFICIENT_BALANCE": ErrorKind(402),
    "FORBIDDEN": ErrorKind(403),
    "SIGNATURE_INVALID": ErrorKind(403),
    "NOT_FOUND": ErrorKind(404),
    "URL_EXPIRED": ErrorKind(410),
    "CONFLICT": ErrorKind(409),
    "WRONG_SERVER": ErrorKind(421),
    # Overload: the queue is full (503, like TGI/vLLM); per-key limits are the client's own (429).
    "QUEUE_FULL": ErrorKind(503, retryable=True),
    "RATE_LIMITED": ErrorKind(429, retryable=True),
    "CONCURRENCY_LIMITED": ErrorKind(429, retryable=True),
    "IDEMPOTENCY_CONFLICT": ErrorKind(409),
    "IDEMPOTENCY_IN_PROGRESS": ErrorKind(409, retryable=True),
    "PAYLOAD_TOO_LARGE": ErrorKind(413),
    "INPUT_URL_BLOCKED": ErrorKind(422),
    "NOT_READY": ErrorKind(503, retryable=True),
    # The data disk is below RETOUCH_MIN_FREE_BYTES: 503 + Retry-After (not WebDAV's 507), because
    # it passes by itself and 503 is the status the official clients and proxies retry on.
    "STORAGE_FULL": ErrorKind(503, retryable=True),
    "INTERNAL_ERROR": ErrorKind(500, retryable=True),
    # Failure reasons of jobs (reported in status bodies, not as HTTP answers).
    "CANCELLED": ErrorKind(409),
    "JOB_TIMEOUT": ErrorKind(504, retryable=True),
    "WORKER_LOST": ErrorKind(500, retryable=True),
    # A job pinned (server_id) to a pod that stayed dead past RETOUCH_PINNED_POD_TIMEOUT_S.
    "SERVER_LOST": ErrorKind(503, retryable=True),
    "GPU_OUT_OF_MEMORY": ErrorKind(503, retryable=True),
    "NON_FINITE_OUTPUT": ErrorKind(500, retryable=True),
    "WEIGHTS_INVALID": ErrorKind(500),
    "ENGINE_ERROR": ErrorKind(500),
}

# Where a hosted API answers a code with another status than the table's, per contract, so the
# official clients raise the exception class they raise against the hosted service.
# OpenAI answers every invalid request with 400 (the openai client's BadRequestError).
_OPENAI_INVALID_REQUEST = (
    "INVALID_PARAMETERS",
    "INVALID_IMAGE",
    "IMAGE_TOO_LARGE",
    "UNSUPPORTED_PARAMETER",
    "INPUT_FETCH_FAILED",
    "INPUT_EXPIRED",
    "INPUT_URL_BLOCKED",
)
CONTRACT_HTTP_STATUS: dict[str, dict[str, int]] = {
    "openai": dict.fromkeys(_OPENAI_INVALID_REQUEST, 400),
}


def http_status_for(code: str, contract: str) -> int:
    """The HTTP status ``contract`` answers error ``code`` with."""
    override = CONTRACT_HTTP_STATUS.get(contract, {}).get(code)
    if override is not None:
        return override
    return ERROR_TABLE.get(code, ERROR_TABLE["INTERNAL_ERROR"]).http_status


class ServiceError(Exception):
    def __init__(
        self, code: str, message: str, *, field: str | None = None, retry_after_s: int | None = None
    ):
        super().__init__(message)
        self.code = code if code in ERROR_TABLE else "INTERNAL_ERROR"
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return ERROR_TABLE[self.code].http_status

    @property
    def retryable(self) -> bool:
        return ERROR_TABLE[self.code].retryable

    @classmethod
    def from_engine(cls, exc: EngineError) -> ServiceError:
        return cls(exc.code, exc.message, field=exc.field)


def is_retryable(code: str) -> bool:
    kind = ERROR_TABLE.get(code)
    return bool(kind and kind.retryable)
