"""The Depicta contract (synchronous ``/v1/edit/image``; ``depicta`` CLI 1.3.0)."""

from ..base import Contract
from .router import build_router
from .service import CONTRACT as NAME
from .service import DepictaService

CONTRACT = Contract(name=NAME, service=DepictaService, router=build_router)

__all__ = ["CONTRACT", "DepictaService", "build_router"]
