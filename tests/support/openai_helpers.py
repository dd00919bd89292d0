"""Shared by the OpenAI/IG1 contract tests: the fake-engine registry, picture helpers, a host."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tests.support.server_harness import WEIGHTS_YAML, PictureHost  # noqa: F401 (used by the contract tests)

KEY = "sk-test-openai"
AUTH = {"Authorization": f"Bearer {KEY}"}
EDITS = "/v1/images/edits"

# The fake-engine registry plus the two tables this contract reads.
OPENAI_WEIGHTS_YAML = (
    WEIGHTS_YAML
    + """
qualities:
  low: {lightning_steps: 8}
  auto: {lightning_steps: 8}
  high: {steps: 4}
public_models:
  qwen-image-edit: {model: edit}
  qwen-image-edit-pe: {model: edit, enhance_prompt: true}
"""
)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def decode_b64(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def rgba_mask(width: int, height: int, hole: tuple[int, int, int, int]) -> bytes:
    """Opaque everywhere except ``hole`` (transparent = the area to edit, OpenAI's convention)."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()
