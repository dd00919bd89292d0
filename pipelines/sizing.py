"""Output sizes: from explicit width/height, an aspect ratio, a "WxH" string or the source."""

from __future__ import annotations

import math
import re

from .errors import InvalidInputError

_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_aspect_ratio(value: str) -> float:
    m = _RATIO.match(value)
    if not m or float(m.group(2)) == 0 or float(m.group(1)) == 0:
        raise InvalidInputError(f"aspect_ratio must look like '16:9', got {value!r}", field="aspect_ratio")
    ratio = float(m.group(1)) / float(m.group(2))
    if not 1 / 8 <= ratio <= 8:
        raise InvalidInputError(f"aspect_ratio {value!r} is more extreme than 8:1", field="aspect_ratio")
    return ratio


def parse_size(value: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    m = _SIZE.match(value)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise InvalidInputError(f"size must look like '1280x720', got {value!r}", field="size")
    return int(m.group(1)), int(m.group(2))


def snap(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def size_for_area(ratio: float, area: int, multiple: int) -> tuple[int, int]:
    width = math.sqrt(area * ratio)
    return snap(width, multiple), snap(width / ratio, multiple)


def output_size(
    source: tuple[int, int],
    *,
    width: int | None,
    height: int | None,
    aspect_ratio: str | None,
    area: int,
    multiple: int,
    max_side: int,
) -> tuple[int, int]:
    """Snap to what the model accepts (a multiple of its patch size) and cap the long side."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and not 1 <= value <= max_side:
            raise InvalidInputError(f"{name} must be within 1..{max_side}, got {value}", field=name)
    src_ratio = source[0] / source[1]
    if width and height:
        w, h = snap(width, multiple), snap(height, multiple)
    elif width:
        w, h = snap(width, multiple), snap(width / src_ratio, multiple)
    elif height:
        w, h = snap(height * src_ratio, multiple), snap(height, multiple)
    else:
        ratio = parse_aspect_ratio(aspect_ratio) if aspect_ratio else src_ratio
        w, h = size_for_area(ratio, area, multiple)
    longest = max(w, h)
    if longest > max_side:
        scale = max_side / longest
        w, h = (max(multiple, int(v * scale) // multiple * multiple) for v in (w, h))
    return w, h


def job_sizes(
    source: tuple[int, int],
    *,
    width: int | None,
    height: int | None,
    aspect_ratio: str | None,
    resolution: str | None,
    masked: bool,
    limits,
    resolutions,
    multiple: int,
) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """(size the model edits at, size delivered, whether the edit is upscaled to it) for a job.

    One function for the engine and for the API's cost estimate, so the two never disagree."""
    if masked:
        # A masked edit must line up with the original pixel for pixel.
        size = output_size(
            source, width=None, height=None, aspect_ratio=None, area=source[0] * source[1],
            multiple=multiple, max_side=max(limits.max_output_side, *source),
        )  # fmt: skip
        return size, source, False
    kwargs = dict(width=width, height=height, aspect_ratio=aspect_ratio, multiple=multiple)
    if not (width or height or aspect_ratio or resolution):
        # The hosted APIs answer with the source's size by default. The model runs at the
        # source size up to its native area and larger sources are upscaled back afterwards.
        final = output_size(
            source, width=source[0], height=source[1], aspect_ratio=None,
            multiple=multiple, area=source[0] * source[1], max_side=limits.max_output_side,
        )  # fmt: skip
        if final[0] * final[1] <= resolutions.area("1k"):
            return final, final, False
        edit = output_size(source, area=resolutions.area("1k"), max_side=limits.max_output_side, **kwargs)
        return edit, final, False
    edit = output_size(source, area=resolutions.area("1k"), max_side=limits.max_output_side, **kwargs)
    if resolution in ("2k", "4k") and not (width or height):
        area = resolutions.area(resolution)
        final = output_size(source, area=area, max_side=max(limits.max_output_side, 16384), **kwargs)
        return edit, final, True
    return edit, edit, False
