"""The FASHN contract (``/v1/run`` model ``edit``; ``fashn`` client 0.9.0)."""

from .router import build_router

__all__ = ["build_router"]
