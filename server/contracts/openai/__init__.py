"""The OpenAI-compatible / IG1 contract (``openai`` client >= 2, IG1's JSON examples)."""

from .router import build_router

__all__ = ["build_router"]
