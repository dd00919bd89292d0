"""Prompt enhancement (the ``-pe`` models) with the edit model's own vision-language encoder.

Qwen-Image-Edit conditions on the hidden states of a complete Qwen2.5-VL (a vision-language model
that keeps its LM head), so the weights already loaded for encoding can also *write*: shown the
input pictures and the user's instruction, the model generates a more specific edit instruction.
No extra weights and no network. Greedy decoding keeps the rewrite deterministic; the length is
bounded, and the text is cleaned and replaced by the user's own prompt when nothing usable comes
out (random test weights produce gibberish, a real model may stop at once).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import torch
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions
from PIL import Image

SYSTEM_PROMPT = (
    "You rewrite instructions for an image-editing model. Look at the input picture(s) and the "
    "user's instruction, then answer with one precise instruction: name what to change and how "
    "(objects, colours, materials, position, lighting, style), say what must stay exactly as it "
    "is, and refer to the pictures as image 1, image 2. Answer with the instruction only, in at "
    "most 80 words."
)
MAX_NEW_TOKENS = 160
MAX_CHARS = 1000
# Shorter than this after cleaning is not an instruction (an echo of punctuation, a lone token).
MIN_CHARS = 8

_PICTURE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
_MARKUP = re.compile(r"<\|[^|<>]{0,40}\|>")
_SPACES = re.compile(r"\s+")


@dataclass
class EnhancedPrompt:
    text: str  # what the edit runs with
    generated_tokens: int  # how many tokens the model wrote before stopping
    used_fallback: bool  # True when the generated text was unusable and ``text`` is the user's prompt


def clean_generated(text: str, *, max_chars: int = MAX_CHARS) -> str:
    """Generated text as a one-paragraph instruction: no chat markup, no control characters."""
    text = _MARKUP.sub(" ", text)
    # control characters, and the replacement character a byte-level token cut mid-UTF-8 decodes to
    text = "".join(" " if unicodedata.category(c)[0] == "C" or c == "\ufffd" else c for c in text)
    text = _SPACES.sub(" ", text).strip()
    if text.lower().startswith("instruction:"):
        text = text[len("instruction:") :]
    text = text.strip().strip("\"'`").strip()
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = cut[: cut.rfind(" ")] if " " in cut[max_chars // 2 :] else cut
    return text.strip()


def _stop_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return [i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id]


@torch.no_grad()
def enhance_prompt(
    pipe,
    prompt: str,
    images: list[Image.Image],
    *,
    vl_condition_pixels: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> EnhancedPrompt:
    """Rewrite ``prompt`` for ``images`` with ``pipe``'s text encoder: the Qwen2.5-VL of a
    Qwen-Image-Edit pipeline, or the Qwen3-VL of Qwen-Image 2.1 (whose tokenizer is its processor's)."""
    from transformers import GenerationConfig

    model, processor = pipe.text_encoder, pipe.processor
    tokenizer = getattr(pipe, "tokenizer", None) or processor.tokenizer
    # The same small view of each picture the pipeline's prompt encoding uses.
    views = []
    for img in images:
        w, h = calculate_dimensions(vl_condition_pixels, img.size[0] / img.size[1])
        views.append(pipe.image_processor.resize(img, h, w))
    pictures = "".join(_PICTURE.format(i + 1) for i in range(len(views)))
    chat = (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{pictures}Instruction: {prompt.strip()}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    inputs = processor(text=[chat], images=views or None, return_tensors="pt").to(pipe._execution_device)
    stop = _stop_ids(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop or None,
        pad_token_id=stop[-1] if stop else tokenizer.pad_token_id,
    )
    output = model.generate(**inputs, generation_config=config)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    text = clean_generated(tokenizer.decode(new_tokens, skip_special_tokens=True))
    if len(text) < MIN_CHARS:
        return EnhancedPrompt(text=prompt, generated_tokens=len(new_tokens), used_fallback=True)
    return EnhancedPrompt(text=text, generated_tokens=len(new_tokens), used_fallback=False)
