"""Engine errors. Each carries a stable ``code`` and whether a retry could succeed.

The server maps these codes to HTTP statuses in one table; the engine itself knows nothing
of HTTP. Messages are meant for the person who sent the job: they name the bad value and
never contain paths or tracebacks.
"""

from __future__ import annotations


class EngineError(Exception):
    code = "ENGINE_ERROR"
    retryable = False

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInputError(EngineError):
    """A job that can never succeed as sent (bad ranges, bad combination of fields)."""

    code = "INVALID_PARAMETERS"


class ImageDecodeError(InvalidInputError):
    """An input picture that cannot be read (corrupt, truncated, not an image)."""

    code = "INVALID_IMAGE"


class ImageTooLargeError(InvalidInputError):
    """An input picture over the pixel cap, refused before it is decoded."""

    code = "IMAGE_TOO_LARGE"


class UnsupportedFeatureError(InvalidInputError):
    """A field the loaded engine cannot honour (e.g. a mode it has no preset for)."""

    code = "UNSUPPORTED_PARAMETER"


class RegistryError(EngineError):
    """weights.yaml is invalid, or a declared model's files are missing."""

    code = "WEIGHTS_INVALID"


class NonFiniteOutputError(EngineError):
    """The model produced NaN/Inf; returning it would give a black or noise picture."""

    code = "NON_FINITE_OUTPUT"
    retryable = True


class GPUOutOfMemoryError(EngineError):
    code = "GPU_OUT_OF_MEMORY"
    retryable = True


class JobCancelledError(EngineError):
    """Raised by a progress callback to stop a running job between steps."""

    code = "CANCELLED"
