"""The OpenAI-compatible / IG1 contract (``openai`` client >= 2, IG1's JSON examples)."""

from ..base import Contract
from .router import build_router
from .service import CONTRACT as NAME
from .service import OpenAIService

CONTRACT = Contract(name=NAME, service=OpenAIService, router=build_router)

__all__ = ["CONTRACT", "OpenAIService", "build_router"]
