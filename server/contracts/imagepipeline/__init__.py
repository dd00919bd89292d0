"""The imagepipeline.io contract (``imagepipeline`` client 0.4.0)."""

from ..base import Contract
from .router import build_router
from .service import CONTRACT as NAME
from .service import ImagePipelineService

CONTRACT = Contract(name=NAME, service=ImagePipelineService, router=build_router)

__all__ = ["CONTRACT", "ImagePipelineService", "build_router"]
