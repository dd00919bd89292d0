"""Refusing at submission a job larger than the memory plan of the workers allows (pure Python).

The worker plans for its device at start; the API process, which never imports torch, reads the
largest output side those plans fit and refuses bigger jobs with a 400 before they are queued,
instead of an out-of-memory failure after the wait.
"""

from __future__ import annotations

from .errors import InvalidInputError
from .registry import Registry
from .sizing import job_sizes
from .spec import EditParams

SIZE_MULTIPLE = 16


def check_planned_side(
    spec: EditParams, registry: Registry, source: tuple[int, int], largest_side: int, *, masked: bool = False
) -> None:
    """InvalidInputError naming the largest side when the GPU would run this job at a larger one."""
    edit, final, upscaled = job_sizes(
        source,
        width=spec.width,
        height=spec.height,
        aspect_ratio=spec.aspect_ratio,
        resolution=spec.resolution,
        masked=masked,
        limits=registry.limits,
        resolutions=registry.resolutions,
        multiple=SIZE_MULTIPLE,
    )
    on_gpu = [edit]
    if spec.refine_strength > 0 or upscaled:
        on_gpu.append(final)  # the refiner runs at the delivered size
    for width, height in on_gpu:
        if max(width, height) > largest_side:
            field = "width" if width >= height else "height"
            raise InvalidInputError(
                f"this server's GPU memory plan fits outputs up to {largest_side}px on the long side; "
                f"this job would run at {width}x{height}: ask for {largest_side}px or less",
                field=field,
            )
