"""The imagepipeline.io contract (``imagepipeline`` client 0.4.0)."""

from .router import build_router

__all__ = ["build_router"]
