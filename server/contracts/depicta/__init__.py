"""The Depicta contract (synchronous ``/v1/edit/image``; ``depicta`` CLI 1.3.0)."""

from .router import build_router

__all__ = ["build_router"]
