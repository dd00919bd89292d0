"""The FASHN contract (``/v1/run`` model ``edit``; ``fashn`` client 0.9.0)."""

from ..base import Contract
from .router import build_router
from .service import CONTRACT as NAME
from .service import FashnService

CONTRACT = Contract(name=NAME, service=FashnService, router=build_router)

__all__ = ["CONTRACT", "FashnService", "build_router"]
