"""From a user's instruction plus hints to the prompt the edit model sees.

Qwen-Image-Edit-Plus numbers its input pictures ("Picture 1: ..., Picture 2: ...") inside the
text encoder's template, so a prompt refers to them as "image 1", "image 2". Reference images
come after the pictures being edited, and the prompt says what each one is for.
"""

from __future__ import annotations

from .postprocess import palette_prompt
from .registry import ModePreset

TEXT_HINT = "Keep every visible text, logo and label exactly as it is, sharp and legible."
PRODUCT_HINT = "Keep the product's shape, colours, materials, labels and fine details exactly as they are."


def build_prompt(
    prompt: str,
    *,
    num_images: int,
    reference_descriptions: list[str | None],
    mode: ModePreset | None,
    palette: list[str],
    has_text: bool,
    has_product: bool,
) -> str:
    text = prompt.strip()
    if mode is not None and mode.prompt_template:
        # replace, not str.format: a user's braces must not be interpreted
        text = mode.prompt_template.replace("{prompt}", text)
    parts = [text.rstrip(".") + "."]
    for offset, description in enumerate(reference_descriptions):
        index = num_images + offset + 1
        what = f": {description.strip()}" if description and description.strip() else ""
        parts.append(f"Image {index} is a reference for the edit{what}.")
    if palette:
        parts.append(palette_prompt(palette))
    if has_product:
        parts.append(PRODUCT_HINT)
    if has_text:
        parts.append(TEXT_HINT)
    return " ".join(parts)
