"""Retouch engine: Qwen-Image-Edit on diffusers.

The public entry point is ``EditEngine(registry).run(spec, on_progress) -> EditResult``.
Importing this package is cheap: torch and diffusers load only when the engine is touched,
so processes that only validate jobs (the API server) never import the model stack.
"""

from .errors import (
    EngineError,
    GPUOutOfMemoryError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidInputError,
    JobCancelledError,
    NonFiniteOutputError,
    RegistryError,
    UnsupportedFeatureError,
)
from .registry import Registry, load_registry, require_files
from .spec import EditParams, EditResult, EditSpec, OutputImage, ProgressCallback, ReferenceImage

__all__ = [
    "EditEngine",
    "EditParams",
    "EditResult",
    "EditSpec",
    "EngineError",
    "GPUOutOfMemoryError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "InvalidInputError",
    "JobCancelledError",
    "NonFiniteOutputError",
    "OutputImage",
    "ProgressCallback",
    "ReferenceImage",
    "Registry",
    "RegistryError",
    "UnsupportedFeatureError",
    "build_tiny_weights",
    "load_registry",
    "require_files",
]


def __getattr__(name: str):
    if name == "EditEngine":
        from .engine import EditEngine

        return EditEngine
    if name == "build_tiny_weights":
        from .tiny.build import build_tiny_weights

        return build_tiny_weights
    raise AttributeError(name)
